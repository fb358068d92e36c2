"""Times the compiled search rollout against the host loop on the scripted searching model.

    PYTHONPATH=. python -m tests.search.bench_compiled_rollout [--rows 8 --repeats 5]

Same rows, per-row keys and greedy sampling for both; a BM25 server on loopback over the
20 test documents, the client's cache off so every run reaches the server. Prints, per mode,
the median wall time of `search_rollout` and of the jitted compiled rollout after one warm-up
run each (compiles excluded), with the turns and decode steps (the same in both).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from ssrl_jax.data.prompts import prompt_token_ids
    from ssrl_jax.sampler import GREEDY
    from ssrl_jax.sampler.buckets import bucket_length, left_pad
    from ssrl_jax.sampler.sampler import row_keys
    from ssrl_jax.search.client import SearchClient
    from ssrl_jax.search.compiled_rollout import compiled_result, make_compiled_search
    from ssrl_jax.search.index import build_bm25_index
    from ssrl_jax.search.rollout import SearchPolicy, search_rollout
    from tests.search.conftest import serve_index, write_corpus
    from tests.search.search_model import searching_sampler

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_compiled_search_"))
    build_bm25_index(write_corpus(work / "corpus.jsonl"), work / "index")
    sampler, tok = searching_sampler(work / "model")
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    prompts = [prompt_token_ids(f"Question {i}?", tokenizer=tok, chat=False)
               for i in range(args.rows)]
    keys = row_keys(0, args.rows)
    ids, valid = left_pad(prompts, bucket_length(max(map(len, prompts))), sampler.pad_id)

    def median_ms(fn):
        fn()  # warm-up: compiles
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    print(f"{args.rows} rows, {args.new_tokens} new tokens, {jax.default_backend()}, "
          f"median of {args.repeats}")
    print(f"{'mode':<20}{'turns':>6}{'steps':>7}{'host loop ms':>14}{'compiled ms':>13}")
    with serve_index(work / "index", work / "server.log") as url, \
            SearchClient(url, topk=2, cache_size=0) as client:
        for mode, protocol in (("self", "free"), ("real", "free"), ("first_k_real", "free"),
                               ("entropy_guided", "free"), ("real", "search_r1")):
            policy = SearchPolicy(mode=mode, max_turns=3, first_k=1, max_info_tokens=48,
                                  protocol=protocol, turn_tokens=40 if protocol != "free" else 0)
            name = mode if protocol == "free" else f"{mode} ({protocol})"

            def host():
                out = search_rollout(sampler, prompts, policy=policy, client=client,
                                     encode=encode, max_new_tokens=args.new_tokens,
                                     sampling=GREEDY, keys=keys, stop_strings=("</answer>",))
                jax.block_until_ready(out.state.tokens)
                return out

            rollout = make_compiled_search(
                policy=policy, client=client, encode=encode, token_bytes=sampler.token_bytes,
                eos_ids=sampler.eos_ids, pad_id=sampler.pad_id, max_new_tokens=args.new_tokens,
                sampling=GREEDY, stop_strings=("</answer>",), layer_loop=sampler.layer_loop,
                kv_windows_count=sampler.kv_windows)
            run = jax.jit(lambda params, ids, valid, keys:
                          rollout(nnx.merge(sampler.graphdef, params), ids, valid, keys))

            def compiled():
                state, counters = run(sampler.params, ids, valid, keys)
                jax.block_until_ready(state.tokens)
                return compiled_result(state, counters, sampler.token_bytes)

            reference, other = host(), compiled()
            assert (reference.turns, reference.decode_steps) == (other.turns, other.decode_steps)
            print(f"{name:<20}{reference.turns:>6}{reference.decode_steps:>7}"
                  f"{median_ms(host):>14.0f}{median_ms(compiled):>13.0f}", flush=True)


if __name__ == "__main__":
    main()
