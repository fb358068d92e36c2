"""Generate a completion from a Hugging Face checkpoint directory.

    python -m ssrl_jax.generate --model HF_DIR --prompt "Who wrote Hamlet?" --chat \
        --temperature 0.7 --top-p 0.95 --max-new-tokens 256 --stop "</answer>" --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ssrl_jax.cli_errors import ArgumentParser, UserError, cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ssrl_jax.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="Hugging Face directory (config, weights, tokenizer)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    mode.add_argument("--temperature", type=float, help="sample at this temperature")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--stop", nargs="+", action="extend", default=[], metavar="STR",
                        help="stop strings (kept in the output)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", help="parameter and compute dtype")
    parser.add_argument("--json", action="store_true",
                        help="print tokens, log-probs, entropies and sources as JSON")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.temperature is None and (args.top_p != 1.0 or args.top_k):
        parser.error("--top-p / --top-k need --temperature (decoding is greedy without it)")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise UserError("not a Hugging Face model directory (no config.json)",
                        f"--model {args.model}", "pass a directory with config.json, "
                        "safetensors and tokenizer files")

    import transformers

    from ssrl_jax.models import load_pretrained
    from ssrl_jax.sampler import GREEDY, Sampler, SamplingConfig, row_outputs
    from ssrl_jax.sampler import text

    try:
        sampling = (GREEDY if args.temperature is None else
                    SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                                   top_k=args.top_k))
    except ValueError as e:
        parser.error(str(e))
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = load_pretrained(args.model, param_dtype=args.dtype)
    sampler = Sampler(model, tokenizer=tokenizer,
                      eos_ids=text.eos_ids(args.model, model.config, tokenizer))
    prompt = text.prompt_ids(tokenizer, args.prompt, chat=args.chat)
    state = sampler.generate([prompt], max_new_tokens=args.max_new_tokens, sampling=sampling,
                             seed=args.seed, stop_strings=args.stop)
    record = text.completion_record(row_outputs(state)[0], tokenizer, args.stop,
                                    int(state.num_steps))
    print(json.dumps(record) if args.json else record["completion"])


if __name__ == "__main__":
    main(sys.argv[1:])
