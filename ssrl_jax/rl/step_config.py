"""What is static about a train step: `StepConfig` (SPEC §5 defaults), built from a run
config's `rollout` and `grpo` sections."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ssrl_jax.rl import grpo
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS
from ssrl_jax.sampler.sampling import SamplingConfig

# "decode": the rollout's weights are gathered over fsdp once per step, before the decode
# loop; "train": they keep the training layout (gathered layer by layer at every decode step).
WEIGHT_LAYOUTS = ("decode", "train")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about a train step (SPEC §5 defaults)."""

    group_size: int = 5
    max_new_tokens: int = 512
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0)
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    num_mini_batches: int = 1
    num_micro_batches: int = 1
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    max_log_ratio: float = grpo.MAX_LOG_RATIO
    kl_coef: float = 0.001
    kl_estimator: grpo.KLEstimator = "low_var_kl"
    # Entropy bonus: loss − entropy_coef · (mean entropy of trained tokens), as verl's
    # actor.entropy_coeff (Search-R1 0.001, SSRL 0).
    entropy_coef: float = 0.0
    aggregation: grpo.Aggregation = "token-mean"
    advantage_estimator: grpo.AdvantageEstimator = "grpo"
    mask_information: bool = True
    logprob_chunk: int = 256
    # Rows of the rollout returned (replicated) under metrics["samples"] for logging.
    sample_rows: int = 0
    # The layout of the rollout's weight copy (`decode_copy`): "decode" or "train".
    weight_layout: str = "decode"
    # Decode steps read the filled part of the KV cache in up to this many windows
    # (`sampler/kv_windows.py`).
    kv_windows: int = DEFAULT_KV_WINDOWS
    # The update runs each micro-batch over the filled slots only, at one of up to this
    # many widths, rows sorted by length first (`rl/length_buckets.py`); 1: all S slots.
    length_buckets: int = DEFAULT_KV_WINDOWS

    def __post_init__(self):
        if not self.eos_ids:
            raise ValueError("StepConfig.eos_ids: at least one end-of-sequence id is needed")
        for name in ("group_size", "num_mini_batches", "num_micro_batches", "ppo_epochs",
                     "max_new_tokens", "logprob_chunk", "kv_windows", "length_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"StepConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.weight_layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"StepConfig.weight_layout={self.weight_layout!r}: must be one of "
                             f"{WEIGHT_LAYOUTS}")
        if self.sample_rows < 0:
            raise ValueError(f"StepConfig.sample_rows must be >= 0, got {self.sample_rows}")
        if not (math.isfinite(self.max_log_ratio) and self.max_log_ratio > 0):
            raise ValueError(f"StepConfig.max_log_ratio must be a finite number > 0, "
                             f"got {self.max_log_ratio}")

    @classmethod
    def from_config(cls, config: Any, *, eos_ids: tuple[int, ...], pad_id: int) -> "StepConfig":
        """The step of a run config (`train_config.default_config()`): its `rollout` and
        `grpo` sections, and `log` for the logged samples."""
        r, g = config.rollout, config.grpo
        return cls(
            group_size=r.group_size, max_new_tokens=r.max_new_tokens,
            sampling=SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                    suppressed_token_ids=r.suppressed_token_ids),
            eos_ids=eos_ids, pad_id=pad_id, num_mini_batches=g.num_mini_batches,
            num_micro_batches=g.num_micro_batches, ppo_epochs=g.ppo_epochs, clip_low=g.clip_low,
            clip_high=g.clip_high, dual_clip=g.dual_clip or None,
            max_log_ratio=float(g.max_log_ratio), kl_coef=g.kl_coef,
            kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef, aggregation=g.aggregation,
            advantage_estimator=g.advantage_estimator, mask_information=g.mask_information,
            logprob_chunk=g.logprob_chunk, length_buckets=g.length_buckets,
            weight_layout=r.weight_layout, kv_windows=r.kv_windows,
            sample_rows=min(config.log.num_samples, config.batch_size)
            if config.log.samples_every_steps else 0)

    @property
    def single_update(self) -> bool:
        """One optimizer update on the batch: the PPO ratio is exactly 1 (as in the papers)."""
        return self.num_mini_batches == 1 and self.ppo_epochs == 1
