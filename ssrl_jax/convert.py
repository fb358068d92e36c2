r"""Convert between Hugging Face model directories and our Orbax checkpoints.

    # A Hugging Face directory -> a params-only checkpoint in WORKDIR/checkpoints/0,
    # with the tokenizer copied to WORKDIR/tokenizer/ (local or gs://):
    python -m ssrl_jax.convert hf-to-orbax --hf ~/Qwen2.5-3B-Instruct --out ~/runs/init \
        [--dtype float32] [--tokenizer DIR | --no-tokenizer]

    # A training checkpoint (WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP;
    # the latest readable step unless named) -> a directory transformers / vLLM load:
    python -m ssrl_jax.convert orbax-to-hf --checkpoint ~/runs/grpo --out ~/export/grpo \
        [--dtype bfloat16] [--tokenizer DIR | --no-tokenizer] [--max-shard-size 5GB] [--overwrite]

Parameters are restored onto a mesh of this host's devices (fsdp over all of
them), so a checkpoint written by a multi-host run converts on one host; the
export then streams them to disk one layer at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ssrl_jax.cli_errors import ArgumentParser, UserError, cli_main

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ConvertError(UserError):
    """A conversion cannot start: a flag or path is wrong. The message names it."""


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units as transformers uses; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB, 500MB or 1000000")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size


def _human(num_bytes: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if num_bytes >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{num_bytes} B"


def build_parser() -> argparse.ArgumentParser:
    from ssrl_jax.models.config import DTYPES

    parser = ArgumentParser(prog="python -m ssrl_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    to_orbax = commands.add_parser("hf-to-orbax", help="Hugging Face directory -> checkpoint")
    to_orbax.add_argument("--hf", required=True, help="directory with config.json + safetensors")
    to_orbax.add_argument("--out", required=True,
                          help="new workdir: writes OUT/checkpoints/0 and OUT/tokenizer")
    to_orbax.add_argument("--dtype", default="float32", choices=DTYPES,
                          help="parameter dtype of the checkpoint (default float32)")

    to_hf = commands.add_parser("orbax-to-hf", help="checkpoint -> Hugging Face directory")
    to_hf.add_argument("--checkpoint", required=True,
                       help="WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP")
    to_hf.add_argument("--out", required=True, help="Hugging Face directory to write")
    to_hf.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                       help="dtype of the exported weights (default bfloat16)")
    to_hf.add_argument("--max-shard-size", type=parse_size, default="5GB",
                       help="largest safetensors shard, e.g. 5GB (default), 500MB")
    to_hf.add_argument("--overwrite", action="store_true",
                       help="replace OUT if it is a non-empty directory")

    for sub in (to_orbax, to_hf):
        tokenizer = sub.add_mutually_exclusive_group()
        tokenizer.add_argument("--tokenizer", metavar="DIR",
                               help="take the tokenizer files from DIR instead")
        tokenizer.add_argument("--no-tokenizer", action="store_true",
                               help="write no tokenizer files")
    return parser


def _local_mesh():
    import jax

    from ssrl_jax.sharding import make_mesh

    return make_mesh({"fsdp": -1}, devices=jax.local_devices())


def _absolute(path: str):
    from etils import epath

    return epath.Path(path if "://" in path else os.path.abspath(os.path.expanduser(path)))


def _require_tokenizer_dir(path, flag: str):
    from ssrl_jax.models.export import TOKENIZER_FILES

    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConvertError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}"
                           ", ...); pass --tokenizer DIR or --no-tokenizer")
    return path


# ------------------------------------------------------------- hf-to-orbax ----

def hf_to_orbax(args: argparse.Namespace) -> None:
    from flax import nnx

    from ssrl_jax import checkpoints
    from ssrl_jax.models import load_pretrained
    from ssrl_jax.models.export import GENERATION_CONFIG_FILE, copy_tokenizer_files

    hf_dir, out = _absolute(args.hf), _absolute(args.out)
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"--hf {hf_dir}: not a Hugging Face model directory (no config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"--out {out}: exists and is not an empty directory")
    tokenizer_source = None
    if not args.no_tokenizer:
        tokenizer_source = (_require_tokenizer_dir(_absolute(args.tokenizer), "--tokenizer")
                            if args.tokenizer else _require_tokenizer_dir(hf_dir, "--hf"))
    generation_config = None
    if (hf_dir / GENERATION_CONFIG_FILE).is_file():
        generation_config = json.loads((hf_dir / GENERATION_CONFIG_FILE).read_text())

    model = load_pretrained(str(hf_dir), param_dtype=args.dtype, mesh=_local_mesh())
    tokenizer_dir = None
    if tokenizer_source is not None:
        tokenizer_dir = out / "tokenizer"
        copied = copy_tokenizer_files(tokenizer_source, tokenizer_dir)
        print(f"tokenizer: {tokenizer_dir} ({', '.join(copied)})")
    step_dir = checkpoints.write_params_checkpoint(
        checkpoints.checkpoint_dir(out), nnx.state(model, nnx.Param), model.config,
        extra_meta={"tokenizer": str(tokenizer_dir) if tokenizer_dir else None,
                    "generation_config": generation_config, "source": str(hf_dir)})
    config = model.config
    print(f"checkpoint: {step_dir} ({config.family}, {config.num_params():,} parameters, "
          f"{args.dtype})")


# ------------------------------------------------------------- orbax-to-hf ----

def _checkpoint_tokenizer(args: argparse.Namespace, meta: dict, directory):
    """The tokenizer directory to export: --tokenizer, meta's, or WORKDIR/tokenizer."""
    if args.no_tokenizer:
        return None
    if args.tokenizer:
        return _require_tokenizer_dir(_absolute(args.tokenizer), "--tokenizer")
    tried = []
    if meta.get("tokenizer"):
        tried.append(_absolute(meta["tokenizer"]))
    # A workdir copied elsewhere still has its tokenizer beside its checkpoints.
    tried.append(directory.parent / "tokenizer")
    for path in tried:
        if path.is_dir():
            return _require_tokenizer_dir(path, "--checkpoint")
    raise ConvertError(
        f"--checkpoint {args.checkpoint}: no tokenizer (meta records "
        f"{meta.get('tokenizer')!r}; looked in {', '.join(map(str, tried))}); "
        "pass --tokenizer DIR or --no-tokenizer")


def orbax_to_hf(args: argparse.Namespace) -> None:
    from ssrl_jax import checkpoints
    from ssrl_jax.models.export import check_out_dir, export_hf, generation_config_for

    from ssrl_jax.safe_paths import UnsafeOverwriteError

    inputs = [("--checkpoint", args.checkpoint)]
    if args.tokenizer:
        inputs.append(("--tokenizer", args.tokenizer))
    try:
        check_out_dir(os.path.abspath(args.out), overwrite=args.overwrite, inputs=inputs)
    except FileExistsError as error:
        raise ConvertError(f"--out {error}") from None
    except UnsafeOverwriteError as error:
        raise ConvertError(str(error)) from None
    try:
        directory, _ = checkpoints.locate(args.checkpoint)
        _, meta = checkpoints.read_meta(args.checkpoint)
    except FileNotFoundError as error:
        raise ConvertError(f"--checkpoint {error}") from None
    tokenizer_dir = _checkpoint_tokenizer(args, meta, directory)

    # The newest step that restores and verifies (a corrupt newer one is skipped, named).
    model, meta = checkpoints.load_model(args.checkpoint, mesh=_local_mesh())
    step = meta["step"]
    generation_config = generation_config_for(
        model.config, base=meta.get("generation_config"), tokenizer_dir=tokenizer_dir)
    try:
        summary = export_hf(model, model.config, args.out, dtype=args.dtype,
                            max_shard_bytes=args.max_shard_size, tokenizer_dir=tokenizer_dir,
                            generation_config=generation_config, overwrite=args.overwrite,
                            inputs=inputs)
    except UnsafeOverwriteError as error:
        raise ConvertError(str(error)) from None
    print(f"exported step {step} of {directory} to {summary.path}: {summary.num_shards} "
          f"shard(s), {_human(summary.total_bytes)} of {args.dtype} weights")
    for name in summary.files:
        print(f"  {name}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    command = {"hf-to-orbax": hf_to_orbax, "orbax-to-hf": orbax_to_hf}[args.command]
    command(args)


if __name__ == "__main__":
    main(sys.argv[1:])
