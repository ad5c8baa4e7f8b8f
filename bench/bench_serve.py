"""`mebot serve` under load: /api latency for retrieval-only and full answers, requests/s, memory.

    .venv/bin/python bench/bench_serve.py [--data-dir data] [--config mebot.yaml] [--requests 150]
        [--concurrency 10] [--full 3] [--quick] [--json OUT]

Starts `mebot serve` as a subprocess on a free loopback port over an already materialized data dir (`make run`
first; bench/run_all.py passes the end-to-end benchmark's), with the rate limit lifted (the benchmark is one
client) and everything else from the settings file. Measures, over HTTP with httpx:
- retrieval-only: three rounds of `--requests` GET /api?retrieval_only=1 (the sample-site questions in turn),
  `--concurrency` at a time: p50/p95 latency and requests/s per round, median (min–max) over the rounds;
- full answers: `--full` questions never asked before (a nonce keeps them out of the LLM call cache), one at a
  time (the server generates one at a time anyway): latency median (min–max) over the questions, requests/s;
  then the same questions again (answered from the LLM call cache);
- the server's resident memory: after start-up (idle) and its peak (VmHWM) after the load.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, percentile, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from tests.sites import free_port  # noqa: E402
from tests.test_end_to_end import SAMPLE_SITE_QUESTIONS  # noqa: E402

SECTION = "8. Serving"
QUESTIONS = list(SAMPLE_SITE_QUESTIONS)
ROUNDS = 3
STARTUP_TIMEOUT_S = 300


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of the process in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def retrieval_load(url: str, n: int, concurrency: int) -> tuple[list[float], float, list[int]]:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(i: int) -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await c.get("/api", params={"query": QUESTIONS[i % len(QUESTIONS)], "retrieval_only": 1})
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status_code)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return latencies, time.perf_counter() - started, statuses


def start_server(config: Path, data: Path, folder: Path) -> tuple[subprocess.Popen, str, float]:
    """`mebot serve` on a free port with the rate limit lifted; returns it, its URL and its start-up seconds."""
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings.setdefault("serve", {}).update(
        rate_limit_per_minute=10_000_000, rate_limit_burst=1_000_000, max_queued_generations=64
    )
    bench_config = folder / "mebot.yaml"
    bench_config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MEBOT_DATA_DIR": str(data), "MEBOT_DAGSTER_HOME": str(folder / "home")}
    log = folder / "serve.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(bench_config), "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    while True:
        if server.poll() is not None or time.perf_counter() - started > STARTUP_TIMEOUT_S:
            stop_server(server)
            raise RuntimeError(f"mebot serve did not become ready: {log.read_text()[-600:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def full_answers(url: str, questions: list[str]) -> tuple[list[float], list[int]]:
    times, words = [], []
    for question in questions:
        begun = time.perf_counter()
        response = httpx.get(f"{url}/api", params={"query": question}, timeout=900)
        times.append(time.perf_counter() - begun)
        response.raise_for_status()
        words.append(len(response.json()["text"].split()))
    return times, words


def run(
    quick: bool = False,
    data_dir: Path | None = None,
    config: Path | None = None,
    requests: int = 150,
    concurrency: int = 10,
    full: int = 3,
) -> list[Result]:
    if quick:
        requests, full = 60, 2
    data = Path(data_dir or os.environ.get("MEBOT_DATA_DIR") or ROOT / "data").resolve()
    config = Path(config or ROOT / "mebot.yaml").resolve()
    if not (data / "rag_chunks.parquet").is_file():
        return [failed(SECTION, "/api", f"nothing materialized in {data}: run `make run` first")]
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        try:
            server, url, startup_s = start_server(config, data, Path(folder))
        except RuntimeError as exc:
            return [failed(SECTION, "/api", str(exc))]
        try:
            time.sleep(1)
            idle_rss, _ = rss_mib(server.pid)
            asyncio.run(retrieval_load(url, 20, concurrency))  # warm-up
            p50s, p95s, rates, bad = [], [], [], 0
            for _ in range(ROUNDS):
                latencies, elapsed, statuses = asyncio.run(retrieval_load(url, requests, concurrency))
                p50s.append(percentile(latencies, 50) * 1000)
                p95s.append(percentile(latencies, 95) * 1000)
                rates.append(requests / elapsed)
                bad += sum(s != 200 for s in statuses)
            note = f"{requests} requests/round, {concurrency} concurrent, non-200: {bad}"
            out += [
                result(SECTION, "/api retrieval-only: p50", p50s, "ms", note=note),
                result(SECTION, "/api retrieval-only: p95", p95s, "ms"),
                result(SECTION, "/api retrieval-only: throughput", rates, "requests/s"),
            ]
            nonce = uuid.uuid4().hex[:8]
            questions = [f"{QUESTIONS[i % len(QUESTIONS)]} (bench {nonce}-{i})" for i in range(full)]
            uncached, words = full_answers(url, questions)
            cached, _ = full_answers(url, questions)
            out += [
                result(
                    SECTION,
                    "/api full answer, new question: latency",
                    uncached,
                    "s",
                    note=f"{full} questions one at a time; p95 {percentile(uncached, 95):.1f} s; "
                    f"answers {min(words)}–{max(words)} words",
                ),
                result(
                    SECTION, "/api full answer, new question: throughput", [len(uncached) / sum(uncached)], "requests/s"
                ),
                result(
                    SECTION,
                    "/api full answer, asked again (LLM call cache): latency",
                    [t * 1000 for t in cached],
                    "ms",
                ),
            ]
            current, peak = rss_mib(server.pid)
            out += [
                result(
                    SECTION, "server RSS, idle after start-up", [idle_rss], "MiB", note=f"ready in {startup_s:.1f} s"
                ),
                result(SECTION, "server peak RSS (VmHWM) after the load", [peak], "MiB"),
            ]
        finally:
            stop_server(server)
    return out


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="materialized data (default: MEBOT_DATA_DIR or data/)"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "mebot.yaml")
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--full", type=int, default=3, help="uncached full answers to time")
    args = parser.parse_args()
    results = run(args.quick, args.data_dir, args.config, args.requests, args.concurrency, args.full)
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
