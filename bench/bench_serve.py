"""`mebot serve` under load: /api latency for retrieval-only and full answers, requests/s, peak memory.

    .venv/bin/python bench/bench_serve.py [--data-dir data] [--config mebot.yaml] [--requests 200]
        [--concurrency 10] [--full 3]

Starts `mebot serve` as a subprocess on a free loopback port over an already materialized data dir (`make run`
first), with the rate limit lifted (the benchmark is one client) and everything else from the settings file.
Measures, over HTTP with httpx:
- retrieval-only: `--requests` GET /api?retrieval_only=1 (the sample-site questions in turn), `--concurrency`
  at a time: p50/p95 latency and requests/s;
- full answers: `--full` questions never asked before (a nonce keeps them out of the LLM call cache), one at a
  time (the server generates one at a time anyway): p50/p95; then the same questions again (cache hits);
- the server's resident memory: after start-up (idle) and its peak (VmHWM) after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pipeline.server.conftest import free_port  # noqa: E402
from tests.test_end_to_end import SAMPLE_SITE_QUESTIONS  # noqa: E402

QUESTIONS = list(SAMPLE_SITE_QUESTIONS)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MEBOT_DATA_DIR") or ROOT / "data"))
    parser.add_argument("--config", type=Path, default=ROOT / "mebot.yaml")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--full", type=int, default=3, help="uncached full answers to time")
    args = parser.parse_args()
    data = args.data_dir.resolve()
    if not (data / "rag_chunks.parquet").is_file():
        print(f"bench_serve: nothing materialized in {data}: run `make run` first", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        settings = yaml.safe_load(args.config.read_text(encoding="utf-8"))
        settings.setdefault("serve", {}).update(
            rate_limit_per_minute=10_000_000, rate_limit_burst=1_000_000, max_queued_generations=64
        )
        config = Path(folder) / "mebot.yaml"
        config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MEBOT_DATA_DIR": str(data), "MEBOT_DAGSTER_HOME": str(Path(folder) / "home")}
        log = open(Path(folder) / "serve.log", "wb")  # noqa: SIM115
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
        try:
            while True:
                if server.poll() is not None:
                    print((Path(folder) / "serve.log").read_text()[-3000:], file=sys.stderr)
                    return 1
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            startup_s = time.perf_counter() - started
            time.sleep(1)
            idle_rss, _ = rss_mib(server.pid)
            print(f"mebot serve ready in {startup_s:.1f} s; idle RSS {idle_rss:.0f} MiB", flush=True)

            asyncio.run(retrieval_load(url, 20, args.concurrency))  # warm-up
            latencies, elapsed, statuses = asyncio.run(retrieval_load(url, args.requests, args.concurrency))
            rss_after_retrieval, _ = rss_mib(server.pid)
            bad = [s for s in statuses if s != 200]
            print(
                f"retrieval-only /api: {args.requests} requests, {args.concurrency} concurrent: "
                f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
                f"{args.requests / elapsed:.1f} requests/s, non-200: {len(bad)}",
                flush=True,
            )

            nonce = uuid.uuid4().hex[:8]
            questions = [f"{QUESTIONS[i % len(QUESTIONS)]} (bench {nonce}-{i})" for i in range(args.full)]
            for label in ("uncached", "cached"):
                times = []
                tokens = []
                for question in questions:
                    begun = time.perf_counter()
                    response = httpx.get(f"{url}/api", params={"query": question}, timeout=900)
                    times.append(time.perf_counter() - begun)
                    response.raise_for_status()
                    tokens.append(len(response.json()["text"].split()))
                print(
                    f"full answers ({label}): {len(times)} questions one at a time: "
                    f"p50 {percentile(times, 0.5):.2f} s, p95 {percentile(times, 0.95):.2f} s, "
                    f"{len(times) / sum(times):.2f} requests/s, answers {min(tokens)}-{max(tokens)} words",
                    flush=True,
                )
            current, peak = rss_mib(server.pid)
            print(
                f"memory: idle {idle_rss:.0f} MiB, after retrieval load {rss_after_retrieval:.0f} MiB, "
                f"after full answers {current:.0f} MiB, peak (VmHWM) {peak:.0f} MiB; "
                f"machine: {psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
