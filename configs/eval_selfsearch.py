r"""Self-search evaluation (SPEC §6): greedy EM plus pass@k / maj@k over K samples.

    python -m ssrl_jax.evaluate --config configs/eval_selfsearch.py \
        --config.model=HF_DIR_OR_CHECKPOINT --config.data_dir=DIR \
        --config.benchmarks=nq,hotpotqa --config.num_samples=64

Every field is checked at start-up by ``ssrl_jax.evaluate.check_config``; see
docs/evaluation.md for each field's meaning and allowed values.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to evaluate.
    c.model = ""            # HF directory (config.json + safetensors) or a training checkpoint
    c.tokenizer = ""        # "" = the HF directory / the checkpoint's recorded tokenizer
    c.dtype = "bfloat16"    # parameter and compute dtype: float32, bfloat16, float16
    # On what: registry names (ssrl_jax.eval.benchmarks), comma-separated, and where the
    # FlashRAG files are ("bundled" = the package's two sample files, nq and hotpotqa;
    # "toyworld" = the toy world's test questions, toyworld_1hop and toyworld_2hop).
    # A *.parquet / *.jsonl path (e.g. Search-R1's test.parquet) is read directly: each of
    # its data_source values is one benchmark, and data_dir may stay "".
    c.benchmarks = "nq,triviaqa,hotpotqa,2wikimultihopqa,musique,bamboogle"
    c.data_dir = ""
    c.limit = 0             # N questions of each benchmark, sampled with `seed`; 0 = all
    # How (SPEC §6 scaling study: temperature 0.7, top_p 0.95, top_k off).
    c.greedy = True         # one greedy response per question (greedy EM)
    c.num_samples = 8       # K samples per question for pass@k / maj@k (paper: up to 1024)
    c.temperature = 0.7
    c.top_p = 0.95
    c.top_k = 0
    c.max_new_tokens = 4096  # the paper's scaling study allows up to 8192
    c.stop_at_answer = False  # SSRL: to EOS, last <answer> scored; True: stop at first </answer>
    c.batch_size = 64        # rows (question x sample) per sampler call
    c.mode = "self_search"   # wording of the prompts we build: self_search or search_r1
    c.prompt_source = "dataset"  # the file's own chat messages when it has them; or rebuild
    c.chat = "auto"          # auto (chat template if the tokenizer has one), true, false
    c.seed = 0
    c.suppressed_token_ids = ""  # ids never generated, comma-separated ("" = none)
    # Where: results.json, <benchmark>.jsonl, <benchmark>_passk.png.
    c.output_dir = "eval_results"
    # Sim2Real (SPEC §7; docs/evaluation.md): also evaluate each question under these rollout
    # modes, comma-separated from self, real, first_k_real, entropy_guided ("" = off), and
    # print one table per benchmark with a column per mode (EM, real searches per question).
    c.search_modes = ""
    c.search_url = ""          # the retriever's /retrieve endpoint (needed for any real mode)
    c.search_topk = 3
    c.max_turns = 2            # real searches per response at most
    c.first_k = 1              # first_k_real: K
    c.entropy_rule = "rise"    # entropy_guided: rise (against the previous query) or threshold
    c.entropy_threshold = 0.0
    c.max_info_tokens = 500    # document tokens injected per search
    c.search_on_failure = "fallback"  # fallback: the model writes the info itself; fail: stop
    # Device mesh (ssrl_jax.sharding.make_mesh); one axis may be -1 (= the remaining devices).
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    return c
