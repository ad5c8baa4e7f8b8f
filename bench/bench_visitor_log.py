"""What the visitor log adds to an answer: the time to log one (SQLite, WAL, one transaction and one connection per
call, as the server's threads do) alone and with writers at once, and the time to record feedback.

    .venv/bin/python bench/bench_visitor_log.py [--answers 2000] [--threads 4]

Prints p50/p95 per logged answer (serial), answers/s with --threads writers at once, and p50/p95 per feedback.
The log file is written in a temporary folder on the same disk as the data folder would be (the repo's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mebot.resources.visitor_log import LoggedAnswer, VisitorLog  # noqa: E402

ENTRY = LoggedAnswer(
    "api",
    "How far did you ride your bikes in 2022?",
    "rag",
    "I rode 6,412 km in 2022, most of it on the Ribble. " * 4,
    ["https://example.com/posts/2022-year-in-review/", "https://example.com/about/"],
    1.25,
    grounded=True,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        log = VisitorLog(Path(folder) / "visitor_log.sqlite")
        log.log(ENTRY)  # creates the file and schema outside the timing
        serial, ids = [], []
        for _ in range(args.answers):
            started = time.perf_counter()
            ids.append(log.log(ENTRY))
            serial.append((time.perf_counter() - started) * 1000)
        feedback = []
        for answer_id in ids[: args.answers // 2]:
            started = time.perf_counter()
            log.add_feedback(answer_id, "down", "not what I asked")
            feedback.append((time.perf_counter() - started) * 1000)
        per_thread = args.answers // args.threads
        threads = [
            threading.Thread(target=lambda: [log.log(ENTRY) for _ in range(per_thread)]) for _ in range(args.threads)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - started
        logged = len(log.read())
    print(f"log one answer (serial, {args.answers}): p50 {statistics.median(serial):.2f} ms, "
          f"p95 {percentile(serial, 95):.2f} ms")  # fmt: skip
    print(f"{args.threads} writers at once: {per_thread * args.threads / concurrent_s:.0f} answers/s "
          f"({per_thread * args.threads} in {concurrent_s:.2f} s); rows in the log: {logged}")  # fmt: skip
    p50, p95 = statistics.median(feedback), percentile(feedback, 95)
    print(f"feedback ({len(feedback)}): p50 {p50:.2f} ms, p95 {p95:.2f} ms")


if __name__ == "__main__":
    main()
