"""The system test's sweep on 1 and on 2 Celery workers (MEBOT_DEPLOY=celery), wall time of each.

    .venv/bin/python bench/bench_celery_workers.py [--workers 1 2] [--reps 1] [--keep DIR]

What is timed, per worker count: `mebot sweep finetune --select finetuned_models` (both sweep points) then
`mebot sweep evaluate` (model_answers, rouge_scores, judge_scores of both), as in tests/system/test_celery_sweep.py
(tests/system/deployment.py: SWEEP_SETTINGS). Set up once and not timed: a PostgreSQL and a Redis on 127.0.0.1
(Debian's packages), `mebot run` of what the sweep reads. Every timed sweep starts from the same copy of that
data directory and an empty database (no Dagster history, an empty LLM call cache: every answer and judgement is
computed), with its workers already started (`mebot worker`, one step at a time each). Worker counts alternate
repetition by repetition, so that drift in the machine's load hits both alike; the 1-minute load average is
printed with every figure (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import write_settings  # noqa: E402
from tests.system.deployment import (  # noqa: E402
    PREPARE_SELECTION,
    SWEEP_SETTINGS,
    deployment_env,
    eval_selection,
    mebot,
    start_worker,
    stop_workers,
    sweep,
    wait_ready,
)
from tests.system.servers import start_postgres, start_redis  # noqa: E402


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--keep", type=Path, default=None, help="work here and keep it, prepared data reused (default: a temp folder)"
    )
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mebot-bench-celery-"))
    root.mkdir(parents=True, exist_ok=True)
    postgres, redis = start_postgres(), start_redis(root)
    rows = []
    try:
        config = write_settings(root / "mebot.yaml", SWEEP_SETTINGS)
        prepared = root / "prepared"
        started = time.monotonic()
        if (prepared / "data" / "finetune_dataset.parquet").is_file():  # --keep DIR of an earlier run
            print(f"reusing {prepared / 'data'}", flush=True)
        else:
            env = deployment_env(prepared, config, prepared / "data", postgres.sqlalchemy_url, redis.url)
            mebot("run", "--select", PREPARE_SELECTION, env=env, log=root / "prepare.log")
            print(f"prepared in {time.monotonic() - started:.0f} s (load {load()})", flush=True)
        for rep in range(args.reps):
            order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
            for count in order:
                rows.append(timed_sweep(root / f"w{count}-r{rep}", prepared / "data", config, postgres, redis, count))
                print(rows[-1], flush=True)
    finally:
        redis.stop()
        postgres.stop()
    print("\n| workers | finetune sweep (s) | evaluate sweep (s) | total (s) | load avg 1 min (start → end) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['workers']} | {row['finetune_s']} | {row['evaluate_s']} | {row['total_s']} | "
            f"{row['load_start']} → {row['load_end']} |"
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def timed_sweep(work: Path, prepared_data: Path, config: Path, postgres, redis, count: int) -> dict:
    url = postgres.new_database(f"sweep_{work.name.replace('-', '_')}").sqlalchemy_url
    work.mkdir(parents=True)
    shutil.copytree(prepared_data, work / "data")
    env = deployment_env(work, config, work / "data", url, redis.url)
    log = work / "mebot.log"
    workers = {f"w{n}": start_worker(f"w{n}", env, work) for n in range(1, count + 1)}
    try:
        wait_ready(workers, work)
        load_start = load()
        finetune = sweep("finetune", "--select", "finetuned_models", env=env, log=log)
        evaluate = sweep("evaluate", *eval_selection(), env=env, log=log)
    finally:
        stop_workers(workers)
    if not all(run["success"] for run in finetune.runs + evaluate.runs):
        raise RuntimeError(f"a run failed: {finetune.runs} {evaluate.runs}; see {log}")
    return {
        "workers": count,
        "finetune_s": finetune.seconds,
        "evaluate_s": evaluate.seconds,
        "total_s": round(finetune.seconds + evaluate.seconds, 1),
        "load_start": load_start,
        "load_end": load(),
    }


if __name__ == "__main__":
    sys.exit(main())
