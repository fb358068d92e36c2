"""Benchmarks that print figures.

    python -m ssrl_jax.bench sampler [--batch 8 --new-tokens 128 --repeats 3 --size 20m --dtype float32]
        [--kv-windows 4]
    python -m ssrl_jax.bench step [--model tiny,20m --prompts 8 --group-size 4 --new-tokens 64]
    python -m ssrl_jax.bench memory --config configs/llama8b.py [--set mesh.fsdp=8 ...] [--devices N]
        [--topology v5p:4x4x4] [--json]
    python -m ssrl_jax.bench plan --config configs/llama8b.py [--topology v5p:4x4x4] [--set ...] [--json]
"""

from __future__ import annotations

import argparse
import sys

from ssrl_jax.cli_errors import ArgumentParser, cli_main
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS


def _sampler(args: argparse.Namespace) -> None:
    from ssrl_jax.benchmarks import sampler

    result = sampler.run(batch=args.batch, new_tokens=args.new_tokens, repeats=args.repeats,
                         size=args.size, dtype=args.dtype, kv_windows=args.kv_windows)
    print(result.report())


def _step(args: argparse.Namespace) -> None:
    from ssrl_jax.benchmarks import step

    for model in args.model.split(","):
        result = step.run(model, prompts=args.prompts, group_size=args.group_size,
                          new_tokens=args.new_tokens, repeats=args.repeats, dtype=args.dtype,
                          param_dtype=args.param_dtype, micro_batches=args.micro_batches,
                          remat=args.remat)
        print(result.report(), flush=True)


def _memory(args: argparse.Namespace) -> None:
    from ssrl_jax.benchmarks import memory

    plan = memory.run(args.config, args.set, devices=args.devices, topology=args.topology,
                      hlo_out=args.hlo_out)
    if args.json:
        print(plan.to_json())
    else:
        print(plan.report(), flush=True)


def _plan(args: argparse.Namespace) -> None:
    from ssrl_jax.benchmarks import roofline

    plan = roofline.run(args.config, args.set, topology=args.topology)
    print(plan.to_json() if args.json else plan.report(), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ssrl_jax.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sampler = commands.add_parser("sampler", help="decode tokens/s: ours vs transformers generate")
    sampler.add_argument("--batch", type=int, default=8)
    sampler.add_argument("--new-tokens", type=int, default=128)
    sampler.add_argument("--repeats", type=int, default=3)
    sampler.add_argument("--size", default="20m", choices=("20m", "1b"),
                         help="model shapes: 20m (CPU), 1b (Llama-3.2-1B shapes, accelerators)")
    sampler.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    sampler.add_argument("--kv-windows", type=int, default=DEFAULT_KV_WINDOWS,
                         help="decode steps read the filled KV slots in up to this many windows "
                         "(1: the whole cache at every step)")
    sampler.set_defaults(run=_sampler)
    step = commands.add_parser("step", help="train step: compile time, sampling/scoring/update "
                               "split, tokens/s")
    step.add_argument("--model", default="tiny,20m",
                      help="comma-separated: tiny (0.1M params), 20m (~20M params), "
                      "1b (Llama-3.2-1B body, accelerators)")
    step.add_argument("--prompts", type=int, default=8)
    step.add_argument("--group-size", type=int, default=4)
    step.add_argument("--new-tokens", type=int, default=64)
    step.add_argument("--repeats", type=int, default=2)
    step.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype")
    step.add_argument("--param-dtype", default=None, choices=("float32", "bfloat16"),
                      help="master weights and optimizer state (default: --dtype)")
    step.add_argument("--micro-batches", type=int, default=1,
                      help="gradient-accumulation micro-batches of the update")
    step.add_argument("--remat", default="none", help="the model's remat policy (ModelConfig)")
    step.set_defaults(run=_step)
    memory = commands.add_parser("memory", help="per-device memory of a config's compiled train "
                                 "step (fake CPU devices, or a TPU topology with libtpu; no "
                                 "weights needed)")
    memory.add_argument("--config", required=True, help="a training config file")
    memory.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set mesh.fsdp=8 (repeatable)")
    memory.add_argument("--devices", type=int, default=None,
                        help="device count when the mesh has a -1 axis")
    memory.add_argument("--topology", default=None, metavar="NAME",
                        help="compile for this TPU topology with libtpu, no chip needed, e.g. "
                        "v5p:4x4x4 (v5p-128), v5p:2x4x4 (v5p-64), v6e:8x8 (v6e-64)")
    memory.add_argument("--hlo-out", default=None, metavar="PATH",
                        help="write the compiled program's HLO text here")
    memory.add_argument("--json", action="store_true", help="print the figures as JSON")
    memory.set_defaults(run=_memory)
    plan = commands.add_parser("plan", help="roofline seconds of a config's step (rollout and "
                               "update) from programs libtpu compiles for a TPU topology, with "
                               "the chip's published peaks; no chip needed")
    plan.add_argument("--config", required=True, help="a training config file")
    plan.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field, e.g. --set mesh.fsdp=8 (repeatable)")
    plan.add_argument("--topology", default="v5p:4x4x4", metavar="NAME",
                      help="the TPU topology compiled for: v5p:4x4x4 (v5p-128, default), "
                      "v5p:2x4x4 (v5p-64), v6e:8x8 (v6e-64), ...")
    plan.add_argument("--json", action="store_true", help="print the figures as JSON")
    plan.set_defaults(run=_plan)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
