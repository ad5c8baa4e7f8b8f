"""End to end: `mebot run` from a cold start, then the re-run after changing only `rag.top_k`.

    .venv/bin/python bench/bench_end_to_end.py [--select SELECTION] [--work-dir DIR] [--timeout 3600] [--json OUT]

What `make run` does, as a subprocess: `mebot --config COPY run` with a fresh data dir (MEBOT_DATA_DIR: no
Parquet, no index, empty LLM and embedding caches) and a fresh Dagster instance (MEBOT_DAGSTER_HOME), the
settings a verbatim copy of mebot.yaml. The project is installed, so "cold" means every cache is empty. Then
`rag.top_k` is changed in the copy (and nothing else: checked) and `mebot run` runs again on the same data.

Figures (one run each: a cold run cannot be repeated within the time budget, so these have no range):
- wall time of the full run (target ≤ 8 minutes on 2 cores) and of the re-run (target ≤ 10% of the full run);
- LLM calls of the re-run: calls answered by the model (rows the re-run added to the LLM cache,
  <data>/cache/llm_calls.sqlite), and calls repeated = rows already there before the re-run that it wrote
  again (a finished call answered by the model a second time; target 0); cache hits from the assets' metadata
  (`llm_cache_hits` in the run's summary);
- peak resident memory of each run: the largest single process and the whole process tree (mebot plus its crawl
  subprocess), sampled every 0.2 s with psutil.
The default selection of `mebot run` is whatever pipeline/jobs.py says; --select passes one through.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

from mebot.resources.layout import DataLayout  # noqa: E402

SECTION = "6. End to end"
FULL_RUN_TARGET_S = 8 * 60
RERUN_TARGET_SHARE = 0.10
SAMPLE_S = 0.2
DEFAULT_TIMEOUT_S = 3600  # per `mebot run`; a run stopped there is reported as not finished
_TOP_K_LINE = re.compile(r"^(\s+top_k:\s*)(\d+)", re.MULTILINE)


@dataclass
class RunStats:
    returncode: int
    wall_s: float
    peak_process_mib: float
    peak_tree_mib: float
    stdout: str
    stderr: str
    timed_out: bool = False

    def summed(self, key: str) -> int:
        """Sum of an integer metadata entry (e.g. llm_cache_hits) over the run's summary lines."""
        return sum(int(n) for n in re.findall(rf"\b{key}=(\d+)", self.stdout))


def mebot_command() -> list[str]:
    script = Path(sys.executable).with_name("mebot")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mebot.pipeline.cli"]


def run_mebot(config: Path, work: Path, select: str | None, timeout_s: float) -> RunStats:
    """`mebot --config CONFIG run` with work/data and work/home; wall time and sampled peak memory."""
    command = [*mebot_command(), "--config", str(config), "run"] + (["--select", select] if select else [])
    env = {
        **{k: v for k, v in os.environ.items() if k != "MEBOT_CONFIG"},
        "MEBOT_DATA_DIR": str(work / "data"),
        "MEBOT_DAGSTER_HOME": str(work / "home"),
    }
    out_path, err_path = work / "run.out", work / "run.err"
    peak_process = peak_tree = 0.0
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=err, start_new_session=True)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            if time.perf_counter() - started > timeout_s:
                timed_out = True
                _kill_tree(watched)
                child.wait()
                break
            sizes = []
            try:
                for process in [watched, *watched.children(recursive=True)]:
                    try:
                        sizes.append(process.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            if sizes:
                peak_process = max(peak_process, max(sizes))
                peak_tree = max(peak_tree, sum(sizes))
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - started
    return RunStats(
        child.returncode,
        wall,
        peak_process,
        peak_tree,
        out_path.read_text(encoding="utf-8", errors="replace"),
        err_path.read_text(encoding="utf-8", errors="replace"),
        timed_out,
    )


def _kill_tree(process: psutil.Process) -> None:
    for child in process.children(recursive=True):
        child.kill()
    process.kill()


def llm_cache_rows(data: Path) -> dict[str, float]:
    """key → created_at of every call in the LLM cache (empty when there is no cache yet)."""
    path = DataLayout(data).llm_cache
    if not path.is_file():
        return {}
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, created_at FROM llm_calls").fetchall())


def change_top_k(config: Path) -> tuple[int, int]:
    """Edit rag.top_k in the settings file in place (comments kept); returns (old, new). Nothing else changes."""
    text = config.read_text(encoding="utf-8")
    before = yaml.safe_load(text)
    old = int(before["rag"]["top_k"])
    new = old - 1 if old > 1 else old + 1
    rag_at = re.search(r"^rag:", text, re.MULTILINE)
    if rag_at is None:
        raise ValueError(f"{config}: no `rag:` section to edit")
    match = _TOP_K_LINE.search(text, rag_at.end())
    if match is None:
        raise ValueError(f"{config}: no rag.top_k line to edit")
    edited = text[: match.start(2)] + str(new) + text[match.end(2) :]
    after = yaml.safe_load(edited)
    before["rag"]["top_k"] = new
    if after != before:
        raise ValueError(f"{config}: editing rag.top_k changed more than rag.top_k")
    config.write_text(edited, encoding="utf-8")
    return old, new


def _failure(stats: RunStats) -> str:
    tail = " ".join((stats.stderr.strip() or stats.stdout.strip()).splitlines()[-3:])
    return f"exit code {stats.returncode} after {stats.wall_s:.0f} s: {tail[-300:]}"


def unfinished(full: RunStats, what: str, timeout_s: float) -> list[Result]:
    """The cold run was stopped at the time limit: its time is a lower bound, and there is nothing to re-run."""
    return [
        result(
            SECTION,
            "`mebot run`, cold (fresh data dir and caches)",
            [full.wall_s / 60],
            "min",
            target=("<=", FULL_RUN_TARGET_S / 60),
            note=f"{what}; STOPPED at the {timeout_s:.0f} s limit before it finished: the real time is longer",
        ),
        result(SECTION, "peak RSS, full run (until stopped): largest process", [full.peak_process_mib], "MiB"),
        result(SECTION, "peak RSS, full run (until stopped): process tree", [full.peak_tree_mib], "MiB"),
        failed(SECTION, "re-run after rag.top_k changed", "not measured: the cold run did not finish"),
    ]


def run(
    quick: bool = False, select: str | None = None, work_dir: Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[Result]:
    """`quick` changes nothing here (a cold run is one run); it exists for bench/run_all.py's uniform call."""
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-")) if temporary else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("data", "home"):
        shutil.rmtree(work / stale, ignore_errors=True)  # cold: nothing from an earlier run
    config = work / "mebot.yaml"
    shutil.copyfile(ROOT / "mebot.yaml", config)
    what = f"selection {select!r}" if select else "the default selection"
    try:
        full = run_mebot(config, work, select, timeout_s)
        if full.timed_out:
            return unfinished(full, what, timeout_s)
        if full.returncode != 0:
            return [failed(SECTION, "`mebot run`, cold", _failure(full))]
        before = llm_cache_rows(work / "data")
        old, new = change_top_k(config)
        rerun = run_mebot(config, work, select, timeout_s)
        if rerun.returncode != 0:
            return [failed(SECTION, f"`mebot run` after rag.top_k {old} → {new}", _failure(rerun))]
        after = llm_cache_rows(work / "data")
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    added = [key for key in after if key not in before]
    repeated = [key for key, created in after.items() if key in before and created != before[key]]
    rerun_label = f"re-run after rag.top_k {old} → {new}"
    return [
        result(
            SECTION,
            "`mebot run`, cold (fresh data dir and caches)",
            [full.wall_s / 60],
            "min",
            target=("<=", FULL_RUN_TARGET_S / 60),
            note=f"{what}; {len(before)} LLM calls made, {full.summed('llm_cache_hits')} cache hits",
        ),
        result(SECTION, f"{rerun_label}", [rerun.wall_s], "s"),
        result(
            SECTION,
            f"{rerun_label} / full run",
            [rerun.wall_s / full.wall_s],
            "share",
            target=("<=", RERUN_TARGET_SHARE),
            note="rebuilt: " + (", ".join(re.findall(r"^start (\S+)", rerun.stdout, re.MULTILINE)) or "nothing"),
        ),
        result(
            SECTION,
            f"{rerun_label}: LLM calls repeated",
            [len(repeated)],
            "calls",
            target=("==", 0),
            note=f"new calls (changed prompts) {len(added)}; cache hits {rerun.summed('llm_cache_hits')}",
        ),
        result(SECTION, "peak RSS, full run: largest process", [full.peak_process_mib], "MiB"),
        result(SECTION, "peak RSS, full run: process tree", [full.peak_tree_mib], "MiB", note="sampled every 0.2 s"),
        result(SECTION, "peak RSS, re-run: largest process", [rerun.peak_process_mib], "MiB"),
        result(SECTION, "peak RSS, re-run: process tree", [rerun.peak_tree_mib], "MiB"),
    ]


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--select", default=None, help="a Dagster asset selection for `mebot run --select`")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run's data here (default: temporary)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before a run is stopped")
    args = parser.parse_args()
    return finish(run(args.quick, args.select, args.work_dir, args.timeout), args.json)


if __name__ == "__main__":
    sys.exit(main())
