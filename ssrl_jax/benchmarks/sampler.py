"""Decode throughput of our jitted sampler against `transformers`' `generate`.

Same weights (a random Llama built in-process, saved with `save_pretrained` and
loaded by both), same left-padded prompts, greedy, KV cache on, in fp32 or bf16 on
the default JAX device (torch on CUDA when JAX runs on a GPU). Throughput counts
generated tokens over the wall time of a whole generation call (prefill included)
after warm-up, best of `repeats`. torch's thread count is printed: on CPU both
libraries share the same cores.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np

from ssrl_jax.sampler.buckets import bucket_length
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS
from ssrl_jax.sampler.kv_windows import kv_windows as windows_of

BENCH_LLAMA = dict(
    vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
    rope_theta=500000.0, tie_word_embeddings=False)
# Llama-3.2-1B's shapes with a smaller vocabulary (for accelerators).
BENCH_LLAMA_1B = dict(
    vocab_size=32768, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
    rope_theta=500000.0, tie_word_embeddings=True)
SIZES = {"20m": BENCH_LLAMA, "1b": BENCH_LLAMA_1B}


@dataclasses.dataclass
class SamplerBenchResult:
    num_params: int
    dtype: str
    device: str
    torch_threads: int
    batch: int
    prompt_lengths: list[int]
    new_tokens: int
    compile_s: float
    ours_s: float
    transformers_s: float
    same_tokens: bool
    same_token_fraction: float
    floor_step_s: float
    kv_windows: tuple[int, ...] = ()

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else 4

    @property
    def ours_step_s(self) -> float:
        return self.ours_s / self.new_tokens

    @property
    def transformers_step_s(self) -> float:
        return self.transformers_s / self.new_tokens

    @property
    def ours_tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.ours_s

    @property
    def transformers_tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.transformers_s

    @property
    def ratio(self) -> float:
        return self.ours_tokens_per_s / self.transformers_tokens_per_s

    def report(self) -> str:
        return "\n".join([
            f"sampler benchmark: Llama {self.num_params / 1e6:.1f}M params, {self.dtype}, "
            f"{self.device} (torch threads {self.torch_threads}), batch "
            f"{self.batch}, prompts of {min(self.prompt_lengths)}-{max(self.prompt_lengths)} "
            f"tokens, {self.new_tokens} new tokens, greedy",
            f"  ssrl_jax sampler      : {self.ours_tokens_per_s:8.0f} tokens/s "
            f"({self.ours_s * 1e3:.0f} ms per call), compile {self.compile_s:.2f} s, "
            f"KV read in windows of {', '.join(map(str, self.kv_windows))} slots",
            f"  transformers generate : {self.transformers_tokens_per_s:8.0f} tokens/s "
            f"({self.transformers_s * 1e3:.0f} ms per call)",
            f"  ratio ours / transformers: {self.ratio:.2f}x",
            f"  identical greedy tokens: {self.same_tokens} ({100 * self.same_token_fraction:.1f}% "
            "of positions" + ("; bf16 rounding differs between the libraries)"
                              if self.dtype == "bfloat16" else ")"),
            f"  weight-streaming floor: one pass over all {self.num_params * self.itemsize / 1e6:.0f}"
            f" MB of {self.dtype} weights (batch {self.batch} matmul) takes "
            f"{self.floor_step_s * 1e3:.2f} ms; "
            f"a decode step takes {self.ours_step_s * 1e3:.2f} ms here "
            f"({self.ours_step_s / self.floor_step_s:.2f}x the floor), "
            f"{self.transformers_step_s * 1e3:.2f} ms in transformers "
            f"({self.transformers_step_s / self.floor_step_s:.2f}x)",
        ])


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(batch: int = 8, new_tokens: int = 128, repeats: int = 3, seed: int = 0,
        size: str = "20m", dtype: str = "float32",
        kv_windows: int = DEFAULT_KV_WINDOWS) -> SamplerBenchResult:
    import jax
    import torch
    import transformers

    from ssrl_jax.models import load_pretrained
    from ssrl_jax.sampler import Sampler, TokenSource
    from ssrl_jax.sampler.state import row_outputs

    shapes = SIZES[size]
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    hf_config = transformers.LlamaConfig(**shapes)
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    rng = np.random.RandomState(seed)
    lengths = rng.randint(16, 33, batch)
    prompts = [list(rng.randint(0, shapes["vocab_size"], n)) for n in lengths]

    with tempfile.TemporaryDirectory() as directory:
        hf_model.to(torch_dtype).save_pretrained(directory)
        model = load_pretrained(directory, param_dtype=dtype)
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    torch_device = "cuda" if on_gpu else "cpu"
    hf_model = hf_model.to(torch_device)
    sampler = Sampler(model, eos_ids=(), kv_windows=kv_windows)

    def ours():
        return jax.block_until_ready(sampler.generate(prompts, max_new_tokens=new_tokens))

    start = time.perf_counter()
    ours()
    first_call = time.perf_counter() - start
    ours_s, state = _best_time(ours, repeats)
    ours_tokens = np.stack([r.tokens_from(TokenSource.POLICY) for r in row_outputs(state)])

    width = max(len(p) for p in prompts)
    prompt_bucket = bucket_length(width)
    ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(torch_device), mask.to(torch_device)

    def theirs():
        with torch.inference_mode():
            out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                    eos_token_id=None, pad_token_id=0)
            if on_gpu:
                torch.cuda.synchronize()
            return out

    theirs()
    transformers_s, output = _best_time(theirs, repeats)
    their_tokens = output[:, width:].cpu().numpy()
    floor_step_s = _weight_streaming_floor(model.config.num_params(), batch, dtype,
                                           repeats=10 * repeats)
    return SamplerBenchResult(
        num_params=model.config.num_params(), dtype=dtype,
        device=f"{jax.devices()[0].device_kind} / torch {torch_device}",
        torch_threads=torch.get_num_threads(), batch=batch,
        prompt_lengths=[len(p) for p in prompts], new_tokens=new_tokens,
        compile_s=first_call - ours_s, ours_s=ours_s, transformers_s=transformers_s,
        same_tokens=bool(np.array_equal(ours_tokens, their_tokens)),
        same_token_fraction=float(np.mean(ours_tokens == their_tokens)),
        floor_step_s=floor_step_s,
        kv_windows=windows_of(prompt_bucket, prompt_bucket + new_tokens, kv_windows))


def _weight_streaming_floor(num_params: int, batch: int, dtype: str, repeats: int) -> float:
    """Seconds of one [batch, 512] @ [512, num_params / 512] matmul (best of `repeats`).

    Every decode step must read every weight once; at small batch that read, not the
    arithmetic, bounds the step, so this is the fastest any decode step can be.
    """
    import jax
    import jax.numpy as jnp

    width = 512
    weights = jnp.ones((width, num_params // width), dtype)
    x = jnp.ones((batch, width), dtype)
    matmul = jax.jit(lambda x, w: x @ w)
    matmul(x, weights).block_until_ready()
    best, _ = _best_time(lambda: matmul(x, weights).block_until_ready(), repeats)
    return best
