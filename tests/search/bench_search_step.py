"""Times real-search training steps of the ssrl_jax on the path (docs/search.md, "Training
with real search"): the scripted searching model, 4 prompts x 4 responses, a BM25 server on
loopback; prints the whole run and the median of steps 2-6.

    XLA_FLAGS=--xla_force_host_platform_device_count=1 PYTHONPATH=. \
        python -m tests.search.bench_search_step [real|first_k_real|entropy_guided|self]

Run it in another checkout (e.g. `git worktree add /tmp/old 2946a27`, with PYTHONPATH there)
to compare two versions of the step on the same machine, alternating.
"""
import json, pathlib, statistics, sys, tempfile, time

import jax  # noqa: E402
from ssrl_jax import trainer  # noqa: E402
from ssrl_jax import train_config as tc  # noqa: E402
from ssrl_jax.search.index import build_bm25_index  # noqa: E402
from tests.search.conftest import serve_index, write_corpus  # noqa: E402
from tests.search.search_model import write_searching_model  # noqa: E402

tmp = pathlib.Path(tempfile.mkdtemp())
model = write_searching_model(tmp / "model")
build_bm25_index(write_corpus(tmp / "corpus.jsonl"), tmp / "bm25")
data = tmp / "train.jsonl"
rows = [("q1", "What is the capital of France?", ["Paris"]), ("q2", "Which river flows through Paris?", ["Seine"]),
        ("q3", "Where is the Louvre?", ["Paris"]), ("q4", "What is the largest river?", ["Amazon"])]
data.write_text("".join(json.dumps({"id": i, "question": q, "golden_answers": g, "data_source": "nq"}) + "\n"
                        for i, q, g in rows))
with serve_index(tmp / "bm25", tmp / "server.log") as url:
    c = tc.default_config()
    c.total_steps, c.batch_size = 6, 4
    c.model.path = str(model)
    c.model.update(param_dtype="float32", dtype="float32", remat="none")
    c.data.update(train_files=str(data), chat="false", shuffle=False)
    c.rollout.update(group_size=4, max_new_tokens=64, mode=sys.argv[1] if len(sys.argv) > 1 else "real")
    c.search.update(url=url, topk=2, max_turns=2, max_info_tokens=24)
    c.optim.update(learning_rate=1e-3, warmup_ratio=0.0)
    c.checkpoint.update(every_steps=100, async_save=False)
    c.log.update(samples_every_steps=0, tensorboard=False)
    start = time.perf_counter()
    trainer.run(c, str(tmp / "run"))
    total = time.perf_counter() - start
    records = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    later = [r["step_seconds"] for r in records[1:]]
    print(f"mode={c.rollout.mode} devices={jax.device_count()} run {total:.1f} s, "
          f"median step (2-6) {statistics.median(later) * 1000:.0f} ms, "
          f"real_searches {records[0].get('real_searches')}")
