"""Train-step benchmark: compile time, the split of one step into sampling /
scoring / update, and tokens per second.

The whole step is timed as the one compiled program training runs; its three
stages (`rl.step.make_step_parts`) are also compiled and timed apart on the same
inputs, which gives the split (their sum is close to, not exactly, the whole).
Prompts are the bundled sample questions in the self-search format, tokenised by
the tokenizer we ship; the model is random, so responses run to the length cap.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

MODELS = {
    "tiny": dict(family="llama", hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True),
    "20m": dict(family="llama", hidden_size=512, intermediate_size=1408, num_layers=6,
                num_heads=8, num_kv_heads=4, head_dim=64, tie_word_embeddings=True),
    # Llama-3.2-1B's body (the vocabulary is the shipped tokenizer's): for accelerators.
    "1b": dict(family="llama", hidden_size=2048, intermediate_size=8192, num_layers=16,
               num_heads=32, num_kv_heads=8, head_dim=64, tie_word_embeddings=True),
}
# Dense bf16 peak FLOP/s of an accelerator, from its `device_kind`, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_kind), None)


@dataclasses.dataclass
class StepBenchResult:
    model: str
    num_params: int
    body_params: int     # the parameters every slot multiplies (no embedding table)
    head_params: int     # the output projection
    dtype: str
    param_dtype: str
    device: str
    peak_memory_bytes: int | None
    prompts: int
    group_size: int
    prompt_tokens: int
    new_tokens: int
    compile_s: float
    step_s: float
    rollout_s: float
    score_s: float
    learn_s: float
    learn_all_slots_s: float
    response_tokens: float
    trained_tokens: float

    @property
    def update_flops(self) -> float:
        """Model FLOPs of the update stage: a reference forward (2 per parameter per token)
        and a policy forward + backward (6), the body over every slot of every response and
        the output projection over the response slots only."""
        rows = self.prompts * self.group_size
        body = self.body_params * rows * (self.prompt_tokens + self.new_tokens)
        return 8.0 * (body + self.head_params * rows * self.new_tokens)

    @property
    def rollout_flops(self) -> float:
        """Model FLOPs of sampling: 2 per body parameter per slot (prefill and decode) and
        2 per head parameter per generated token (attention over the cache not counted)."""
        rows = self.prompts * self.group_size
        return 2.0 * rows * (self.body_params * (self.prompt_tokens + self.new_tokens)
                             + self.head_params * self.new_tokens)

    def report(self) -> str:
        parts = self.rollout_s + self.score_s + self.learn_s
        share = lambda s: f"{s * 1e3:8.1f} ms ({100 * s / parts:4.1f}%)"  # noqa: E731
        return "\n".join([
            f"train step [{self.model}]: {self.num_params / 1e6:.2f}M params, {self.param_dtype} "
            f"parameters, {self.dtype} compute, {self.device}, "
            f"{self.prompts} prompts x {self.group_size} samples, prompts padded to "
            f"{self.prompt_tokens} tokens, up to {self.new_tokens} new tokens",
            f"  compile (whole step)   : {self.compile_s:8.1f} s",
            f"  one step (one program) : {self.step_s * 1e3:8.1f} ms",
            f"    sampling             : {share(self.rollout_s)}",
            f"    scoring (host)       : {share(self.score_s)}",
            f"    update (fwd+bwd+opt) : {share(self.learn_s)}",
            f"  update, logits over every slot (prompt too): {self.learn_all_slots_s * 1e3:.1f} "
            f"ms ({self.learn_all_slots_s / self.learn_s:.2f}x the response-only update)",
            f"  generated tokens/s     : {self.response_tokens / self.step_s:10.0f} "
            f"({self.response_tokens:.0f} per step)",
            f"  trained tokens/s       : {self.trained_tokens / self.step_s:10.0f} "
            f"({self.trained_tokens:.0f} unmasked response tokens per step)",
            f"  update model FLOP/s    : {self.update_flops / self.learn_s / 1e9:10.2f} G",
        ] + self._accelerator_lines())

    def _accelerator_lines(self) -> list[str]:
        lines = []
        peak = peak_flops(self.device)
        if peak:
            lines += [
                f"  update MFU             : {100 * self.update_flops / self.learn_s / peak:6.1f}%"
                f" of {peak / 1e12:.0f} TFLOP/s ({self.device}, dense bf16)",
                f"  sampling MFU           : "
                f"{100 * self.rollout_flops / self.rollout_s / peak:6.1f}%"]
        if self.peak_memory_bytes:
            lines.append(f"  peak device memory     : {self.peak_memory_bytes / 2**30:8.2f} GiB")
        return lines


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax_block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def jax_block(x):
    import jax

    return jax.block_until_ready(x)


def run(model: str = "tiny", *, prompts: int = 8, group_size: int = 4, new_tokens: int = 64,
        repeats: int = 3, dtype: str = "float32", param_dtype: str | None = None,
        micro_batches: int = 1, remat: str = "none", seed: int = 0) -> StepBenchResult:
    import jax
    from flax import nnx
    from transformers import AutoTokenizer

    from ssrl_jax.data.golds import encode_golds
    from ssrl_jax.data.prompts import prompt_token_ids
    from ssrl_jax.data.qa import read_jsonl, sample_data_path
    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
    from ssrl_jax.models import ModelConfig, init_model
    from ssrl_jax.rl.rewards import ssrl_reward
    from ssrl_jax.rl.optimizer import make_optimizer
    from ssrl_jax.rl.grpo import group_advantages
    from ssrl_jax.rl.scoring import SCORE_NAMES
    from ssrl_jax.rl.step import StepConfig, make_step_parts, make_train_step
    from ssrl_jax.rl.train_state import init_train_state
    from ssrl_jax.sampler.buckets import bucket_length, left_pad
    from ssrl_jax.sampler.token_text import token_bytes

    tokenizer = AutoTokenizer.from_pretrained(quickstart_tokenizer_path())
    rows = read_jsonl(sample_data_path())[:prompts]
    ids = [prompt_token_ids(r.question, tokenizer=tokenizer, chat=False) for r in rows]
    ids, valid = left_pad(ids, bucket_length(max(map(len, ids))), tokenizer.pad_token_id)
    batch = {"prompt_ids": ids, "prompt_valid": valid,
             "golds": encode_golds([r.golden_answers for r in rows], 16, 128)}

    config = ModelConfig(**MODELS[model], vocab_size=len(tokenizer),
                         eos_token_id=tokenizer.eos_token_id,
                         param_dtype=param_dtype or dtype, dtype=dtype, remat=remat)
    policy = init_model(config, seed=seed)
    optimizer = make_optimizer(1e-5, warmup_steps=1)
    graphdef = nnx.graphdef(policy)
    state = init_train_state(policy, optimizer)
    step_config = StepConfig(group_size=group_size, max_new_tokens=new_tokens,
                             eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id,
                             num_micro_batches=micro_batches)
    kwargs = dict(token_bytes=token_bytes(tokenizer, config.vocab_size),
                  reward_fn=functools.partial(ssrl_reward, format_weight=0.1),
                  optimizer=optimizer)
    key = jax.random.key(seed)

    # The stages alone (not donated, so the same state serves every repeat).
    parts = make_step_parts(graphdef, step_config, **kwargs)
    rollout, score = jax.jit(parts.rollout), jax.jit(parts.score)
    learn = jax.jit(functools.partial(parts.learn, prompt_len=batch["prompt_ids"].shape[1]))
    rollout_state = jax_block(rollout(state.params, batch, key))[0]
    rollout_s, (rollout_state, _) = _median_time(lambda: rollout(state.params, batch, key),
                                                 repeats)
    scored = jax_block(score(rollout_state, batch))
    score_s, (scores, mask) = _median_time(lambda: score(rollout_state, batch), repeats)
    advantages = group_advantages(scores[:, SCORE_NAMES.index("reward")], group_size)
    jax_block(learn(state, rollout_state, mask, advantages, key))
    learn_s, _ = _median_time(lambda: learn(state, rollout_state, mask, advantages, key),
                              repeats)
    # The same update with the output projection over the prompt slots too (what it was
    # before `prompt_len`), for the ratio.
    learn_all = jax.jit(functools.partial(parts.learn, prompt_len=1))
    jax_block(learn_all(state, rollout_state, mask, advantages, key))
    learn_all_slots_s, _ = _median_time(
        lambda: learn_all(state, rollout_state, mask, advantages, key), repeats)
    del scored

    # The whole step, compiled once, state donated as in training.
    step = make_train_step(graphdef, step_config, **kwargs,
                           state_sharding=jax.tree.map(lambda x: x.sharding, state))
    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    state, metrics = jax_block(compiled(state, batch, key))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = jax_block(compiled(state, batch, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - start)
    metrics = jax.device_get(metrics)
    responses = prompts * group_size
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return StepBenchResult(
        model=model, num_params=config.num_params(),
        body_params=config.num_params() - config.hidden_size * config.vocab_size * (
            1 if config.tie_word_embeddings else 2),
        head_params=config.hidden_size * config.vocab_size, dtype=dtype,
        param_dtype=config.param_dtype, device=device.device_kind,
        peak_memory_bytes=(stats or {}).get("peak_bytes_in_use"), prompts=prompts,
        group_size=group_size, prompt_tokens=ids.shape[1], new_tokens=new_tokens,
        compile_s=compile_s, step_s=statistics.median(times), rollout_s=rollout_s,
        score_s=score_s, learn_s=learn_s, learn_all_slots_s=learn_all_slots_s,
        response_tokens=float(metrics["response_length"]) * responses,
        trained_tokens=float(metrics["trained_tokens"]))
