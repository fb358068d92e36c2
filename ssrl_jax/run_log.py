"""What a training run reports: a progress line per step, `metrics.jsonl`,
TensorBoard event files, and decoded sample trajectories (`samples.jsonl`).

Only process 0 writes; every other process's `RunLog` is silent. Paths go through
`etils.epath`, so a `gs://` workdir works as a local one does.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from typing import Any, Mapping, TextIO

from etils import epath

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"
# (metric, label, format) shown on the progress line, in this order.
PROGRESS_FIELDS = (
    ("reward", "reward", "{:.3f}"),
    ("exact_match", "em", "{:.3f}"),
    ("format_score", "format", "{:.2f}"),
    ("response_length", "len", "{:.0f}"),
    ("kl", "kl", "{:.2e}"),
)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def progress_line(step: int, total_steps: int, metrics: Mapping[str, float], *,
                  tokens_per_second: float, seconds_per_step: float) -> str:
    """'step 12/20 | reward 0.420 | em 0.350 | … | 812 tok/s | 0.9 s/step | ETA 0:00:07'."""
    parts = [f"step {step}/{total_steps}"]
    parts += [f"{label} {fmt.format(metrics[name])}" for name, label, fmt in PROGRESS_FIELDS
              if name in metrics]
    eta = seconds_per_step * max(total_steps - step, 0)
    parts += [f"{tokens_per_second:,.0f} tok/s", f"{seconds_per_step:.2f} s/step",
              f"ETA {format_duration(eta)}"]
    return " | ".join(parts)


class RunLog:
    """Writes one run's metrics and samples under `workdir` (process 0 only)."""

    def __init__(self, workdir: str | epath.Path, *, total_steps: int, tensorboard: bool = True,
                 enabled: bool = True, stream: TextIO | None = None):
        self.workdir = epath.Path(workdir)
        self.total_steps = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._writer = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))
        self._last_time: float | None = None

    def start_timer(self) -> None:
        self._last_time = time.perf_counter()

    def step(self, step: int, metrics: Mapping[str, float], *, tokens: float) -> dict[str, float]:
        """Records one finished step; returns the metrics with timing added."""
        now = time.perf_counter()
        seconds = now - self._last_time if self._last_time is not None else float("nan")
        self._last_time = now
        record = {name: float(value) for name, value in metrics.items()}
        record["step_seconds"] = seconds
        record["tokens_per_second"] = tokens / seconds if seconds > 0 else float("nan")
        if not self.enabled:
            return record
        with (self.workdir / METRICS_FILE).open("a") as f:
            f.write(json.dumps({"step": step, **_finite(record)}) + "\n")
        if self._writer is not None:
            for name, value in record.items():
                if math.isfinite(value):
                    self._writer.add_scalar(f"train/{name}", value, step)
        return record

    def drop_records_after(self, step: int) -> None:
        """Removes metrics and samples of steps after `step` (the run resumes there and
        redoes them), and any torn last line a kill left behind."""
        if not self.enabled:
            return
        for name in (METRICS_FILE, SAMPLES_FILE):
            _keep_records_up_to(self.workdir / name, step)

    def progress(self, step: int, record: Mapping[str, float]) -> None:
        if self.enabled:
            print(progress_line(step, self.total_steps, record,
                                tokens_per_second=record["tokens_per_second"],
                                seconds_per_step=record["step_seconds"]),
                  file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Appends decoded trajectories ({"prompt", "response", "reward", ...}) for `step`."""
        if not self.enabled or not samples:
            return
        with (self.workdir / SAMPLES_FILE).open("a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")
        if self._writer is not None:
            text = "\n\n".join(f"**reward {s['reward']:.2f}**\n\n    "
                               + (s["prompt"][-200:] + s["response"]).replace("\n", "\n    ")
                               for s in samples)
            self._writer.add_text("samples", text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _keep_records_up_to(path: epath.Path, step: int) -> None:
    """Rewrites the jsonl file `path` without records of steps after `step` (atomically)."""
    if not path.exists():
        return
    kept, dropped = [], False
    for line in path.read_text().splitlines():
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped = True
            continue
        if record_step <= step:
            kept.append(line)
        else:
            dropped = True
    if dropped:
        partial = path.parent / f".{path.name}.partial"
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)


def _finite(record: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: non-finite values are written as null."""
    return {k: (v if math.isfinite(v) else None) for k, v in record.items()}
