"""Every benchmark in sequence, one table printed and written to bench/results.md (`make bench`).

    .venv/bin/python bench/run_all.py [--quick] [--select SELECTION] [--only crawl index ...] [--output PATH]

Each benchmark runs as its own process (`bench/bench_<name>.py --json FILE`), so that one benchmark's loaded
models, thread settings and memory do not leak into the next, and its peak memory is its own. The end-to-end
benchmark runs before serving, which measures `mebot serve` over the data the end-to-end run materialized.
A benchmark that fails or runs out of time becomes a FAILED row; the others still run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, machine_facts, markdown_table, read_json, text_table  # noqa: E402

BENCH = Path(__file__).resolve().parent
# name → (section, seconds allowed); run in this order
BENCHMARKS: dict[str, tuple[str, int]] = {
    "llama_build": ("0. llama.cpp build", 600),
    "crawl": ("1. Crawl", 600),
    "chunking": ("2. Chunking", 300),
    "embeddings": ("3. Embeddings", 900),
    "index": ("4. Index", 900),
    "end_to_end": ("6. End to end", 7800),  # two `mebot run`s of up to an hour each
    "generation": ("5. Generation", 1200),
    "langchain": ("7. Reference pipeline (LangChain)", 900),
    "serve": ("8. Serving", 900),
    "rag_answers": ("10. RAG answers (golden questions)", 900),
}
# Sizes that keep the whole of `make bench` near its 15 minutes on 2 cores (each script's own defaults are bigger;
# --quick has its own smaller sizes).
SIZES: dict[str, list[str]] = {
    "embeddings": ["--windows", "48"],
    "generation": ["--reps", "3"],
    "serve": ["--full", "2"],
}
# Run only when named with --only (too slow for the 15-minute budget of `make bench`).
OPTIONAL: dict[str, tuple[str, int]] = {"finetune": ("9. Fine-tuning (optional)", 1800)}
HOW = {
    "0. llama.cpp build": "The portable wheel (AVX2/FMA/F16C, what make setup installs) and a native one "
    "(MEBOT_LLAMA_NATIVE=1, when built) from .wheels/, each unpacked and run by a fresh process on the bundled GGUF, "
    "alternating; llama.cpp's own counters.",
    "1. Crawl": "Scrapy crawl (resources/crawler.py) of a generated 600-page site served on 127.0.0.1, "
    "download_delay 0.",
    "2. Chunking": "assets/ingest/chunks.py chunk_pages on the sample site's pages; cl100k_base tokens per second.",
    "3. Embeddings": "Passages (model windows) per second on the same texts and batch size; ratios per round.",
    "4. Index": "Random 384-d unit vectors; write_index (build + atomic write) and one-query-at-a-time search.",
    "5. Generation": "SmolLM2-135M Q4_1 via llama.cpp; ChatClient (cache off) vs a bare llama_cpp.Llama, "
    "alternating calls; a LoRA adapter (default sweep shape) vs the base.",
    "6. End to end": "`mebot run` in a subprocess with a fresh data dir, Dagster home and caches; then rag.top_k "
    "changed in the copied settings and `mebot run` again. One run each.",
    "7. Reference pipeline (LangChain)": "The same corpus and MiniLM files through LangChain's splitter, "
    "langchain-community's HuggingFaceEmbeddings and FAISS; 50 questions, top 4.",
    "8. Serving": "`mebot serve` over the end-to-end run's data; httpx client on loopback, rate limit lifted.",
    "10. RAG answers (golden questions)": "The sample site's 44 golden questions asked one at a time of each answer "
    "mode (extractive: no LLM; rag: mebot.yaml's defaults, SmolLM2-135M, greedy), scored by assets/evaluation/"
    "golden.py (no judge); latency after a warm-up pass; retrieval dense vs hybrid on the golden questions and on "
    "sentences from the second half of each page.",
}


def run_benchmark(name: str, quick: bool, extra: list[str], timeout_s: int, logs: Path) -> tuple[list[Result], float]:
    """Runs bench_<name>.py in its own process; its results and peak RSS (MiB), or a FAILED row."""
    section = {**BENCHMARKS, **OPTIONAL}[name][0]
    out = logs / f"{name}.json"
    command = [sys.executable, str(BENCH / f"bench_{name}.py"), "--json", str(out), *extra]
    command += ["--quick"] if quick else SIZES.get(name, [])
    log = logs / f"{name}.log"
    with log.open("wb") as handle:
        try:
            process = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [failed(section, f"bench_{name}.py", f"ran over its {timeout_s} s limit")], 0.0
    if out.is_file():
        return read_json(out)
    tail = " ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:])
    return [failed(section, f"bench_{name}.py", f"exit code {process.returncode}: {tail[-400:]}")], 0.0


def write_markdown(
    path: Path,
    results: list[Result],
    facts: dict[str, str],
    seconds: dict[str, float],
    peaks: dict[str, float],
    quick: bool,
    select: str | None,
) -> None:
    total = sum(seconds.values())
    lines = [
        "# mebot benchmarks",
        "",
        f"Written by `make bench` (`bench/run_all.py{' --quick' if quick else ''}`) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, in {total / 60:.1f} minutes.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
        "This machine is shared and noisy: absolute times move between runs (and slow down a lot when another",
        "process uses a core), so comparisons are ratios measured in the same run, repetitions interleaved; a",
        "figure is the median over its repetitions, with (min–max). A target is stated with each figure that has",
        "one, and whether the median meets it.",
        "",
    ]
    targets = [r for r in results if r.target]
    failures = [r for r in results if r.note.startswith("FAILED")]
    met = sum(bool(r.met) for r in targets)
    headline = f"**Targets: {met} of {len(targets)} measured targets met"
    headline += f"; {len(failures)} figure(s) could not be measured (below).**" if failures else ".**"
    lines += [headline, ""]
    for r in targets:
        lines.append(f"- {r.section} — {r.name}: {r.value_text()} {r.unit}, target {r.target}: {r.verdict()}")
    for r in failures:
        lines.append(f"- {r.section} — {r.name}: {r.note}")
    lines.append("")
    sections: dict[str, list[Result]] = {}
    for r in sorted(results, key=lambda r: r.section):
        sections.setdefault(r.section, []).append(r)
    for section, rows in sections.items():
        lines += [f"## {section}", "", HOW.get(section, ""), "", markdown_table(rows), ""]
    lines += [
        "## Notes",
        "",
        f"- End to end: `mebot run` {'--select ' + repr(select) if select else 'with its default selection'} "
        "(pipeline/jobs.py decides what that contains); the re-run is whatever `mebot run` does after the edit "
        "(what it rebuilds, what it skips as fresh, what the embedding and LLM caches save).",
        "- LLM calls repeated = rows of the LLM call cache that the re-run wrote again although they were there "
        "before it; new calls are calls whose prompt changed (e.g. answers with another top_k).",
        "- Each benchmark runs in its own process (peak RSS of that process; the `mebot` processes that "
        "end_to_end and serve start are measured in their sections): "
        + ", ".join(f"{name} {seconds[name]:.0f} s (peak RSS {peaks[name]:.0f} MiB)" for name in seconds)
        + ".",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller inputs everywhere")
    parser.add_argument("--select", default=None, help="asset selection for the end-to-end `mebot run`")
    parser.add_argument("--only", nargs="+", choices=[*BENCHMARKS, *OPTIONAL], default=None, help="run only these")
    parser.add_argument("--output", type=Path, default=BENCH / "results.md")
    args = parser.parse_args()

    facts = machine_facts()
    print("mebot benchmarks: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    results: list[Result] = []
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        e2e_work = Path(tmp) / "e2e"
        chosen = {**BENCHMARKS, **OPTIONAL} if args.only else BENCHMARKS
        for name, (section, timeout_s) in chosen.items():
            if args.only and name not in args.only:
                continue
            extra: list[str] = []
            if name == "end_to_end":
                extra = ["--work-dir", str(e2e_work)] + (["--select", args.select] if args.select else [])
            elif name == "serve" and (e2e_work / "data" / "rag_chunks.parquet").is_file():
                extra = ["--data-dir", str(e2e_work / "data"), "--config", str(e2e_work / "mebot.yaml")]
            elif name == "generation":
                adapters = sorted((e2e_work / "data" / "models").glob("*/adapter.gguf"))
                extra = ["--adapter", str(adapters[0])] if adapters else []
            print(f"{section}: bench/bench_{name}.py ...", end=" ", flush=True)
            started = time.perf_counter()
            rows, peaks[name] = run_benchmark(name, args.quick, extra, timeout_s, logs)
            seconds[name] = time.perf_counter() - started
            bad = [r for r in rows if r.note.startswith("FAILED")]
            print(f"{seconds[name]:.0f} s" + (f" ({len(bad)} FAILED: see the table)" if bad else ""), flush=True)
            results += rows
    results.sort(key=lambda r: r.section)
    print(text_table(results))
    facts["load average (1 min) at the end"] = f"{os.getloadavg()[0]:.2f}"
    write_markdown(args.output, results, facts, seconds, peaks, args.quick, args.select)
    targets = [r for r in results if r.target]
    print(
        f"\n{sum(bool(r.met) for r in targets)} of {len(targets)} targets met; "
        f"{sum(seconds.values()) / 60:.1f} minutes in all; written to {args.output}"
    )
    return 1 if any(r.note.startswith("FAILED") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
