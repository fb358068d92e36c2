"""Search-R1's GRPO recipe: a real retriever answers every search during training (SPEC §2, §7).

Every number is Search-R1's `train_grpo.sh` (PeterGriffinJin/Search-R1) and the verl config it
overrides; docs/search.md ("Search-R1's recipe") lists each one next to the original, with
file:line. In short: 512 prompts × 5 responses per step, 10 optimizer updates of 256 responses
each, lr 1e-6 with a 28.5 % linear warm-up then constant, 1005 steps, reward = exact match
only, KL 0.001 (low_var_kl) in the loss, entropy bonus 0.001, top-p 0.95; Search-R1's agent
loop with 2 search turns + 1 last turn of ≤ 500 tokens each, 3 documents of ≤ 500 tokens per
search, invalid actions answered with its feedback text, all inside the one compiled step
(docs/search.md).

Start the retriever first (ssrl_jax.search.server over a BM25 or E5 index of the 2018
Wikipedia dump, or Search-R1's own server), then train:

    python -m ssrl_jax.search.server --index /data/wiki_bm25 --port 8000 &
    python -m ssrl_jax.train --config configs/search_r1.py \
        --config.model.path=/models/Qwen2.5-3B \
        --config.data.train_files=/data/nq_hotpotqa_train/train.parquet \
        --config.search.url=http://127.0.0.1:8000/retrieve --workdir /runs/search_r1

Variants: --config.rollout.mode=first_k_real --config.search.first_k=1 (Sim2Real training),
--config.rollout.mode=entropy_guided, --config.grpo.reward=ttrl (no gold answers used).
"""

from ssrl_jax.train_config import default_config

TURN_TOKENS = 500   # Search-R1 data.max_response_length: tokens per generation turn
MAX_TURNS = 2       # Search-R1 max_turns: action turns before the last one


def get_config():
    c = default_config()
    # A Hugging Face directory (weights, config.json, tokenizer), local or gs://.
    c.model.path = "/YOUR/MODELS/Qwen2.5-3B"
    c.data.train_files = "/YOUR/DATA/nq_hotpotqa_train/train.parquet"
    # Search-R1 trains on its parquet's `prompt` messages verbatim (nq_search.py's template);
    # jsonl files get our search_r1 instruction (docs/fidelity.md, "prompts").
    c.data.prompt_mode = "search_r1"
    c.data.max_prompt_tokens = 2048       # data.max_start_length
    c.batch_size = 512                    # data.train_batch_size
    c.total_steps = 1005                  # trainer.total_training_steps
    c.rollout.group_size = 5              # actor_rollout_ref.rollout.n_agent
    c.rollout.temperature = 1.0
    c.rollout.top_p = 0.95                # verl rollout default, not overridden
    c.rollout.mode = "real"
    # (MAX_TURNS + 1) turns of at most TURN_TOKENS policy tokens each.
    c.rollout.max_new_tokens = (MAX_TURNS + 1) * TURN_TOKENS
    c.grpo.format_weight = 0.0            # qa_em.compute_score_em: EM only, format_score 0
    # ppo_mini_batch_size=256 counts responses here (rollout.n=1; n_agent repeats prompts):
    # 512 × 5 = 2560 responses -> 10 optimizer updates per step.
    c.grpo.num_mini_batches = 10
    c.grpo.num_micro_batches = 4          # ppo_micro_batch_size=64 (memory only)
    c.grpo.entropy_coef = 0.001           # actor.entropy_coeff (verl default, not overridden)
    c.optim.learning_rate = 1e-6
    c.optim.warmup_ratio = 0.285          # lr_warmup_steps_ratio -> int(0.285 × 1005) = 286
    c.optim.schedule = "constant"
    c.search.url = "http://127.0.0.1:8000/retrieve"
    c.search.topk = 3                     # retriever.topk
    c.search.protocol = "search_r1"
    c.search.turn_tokens = TURN_TOKENS
    c.search.max_turns = MAX_TURNS
    c.search.max_info_tokens = 500        # data.max_obs_length
    c.search.on_failure = "fail"
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.every_steps = 25
    return c
