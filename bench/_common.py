"""What every benchmark shares: repetitions, median (min–max) summaries, ratios, peak memory, a result record,
the results table, and the machine facts that go with it.

This machine is shared and noisy, so absolute times wander between runs; what a benchmark claims is a ratio of
two variants measured in the same run, interleaved repetition by repetition so that drift hits both alike. A
ratio is reported as the median (min–max) of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Progress bars (model loading, GGUF conversion) would drown the figures in the output.
os.environ.setdefault("TQDM_DISABLE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "==": lambda value, bound: value == bound,
}
_SHOWN = {">=": "≥", "<=": "≤", "==": "="}


@dataclass
class Result:
    """One figure: the median and range over `reps` repetitions, and its target when the issue sets one."""

    section: str
    name: str
    unit: str
    median: float
    min: float
    max: float
    reps: int
    target: str = ""  # e.g. "≥ 0.9", empty when there is none
    met: bool | None = None
    note: str = ""

    def value_text(self) -> str:
        digits = _digits(self.median)
        text = f"{self.median:,.{digits}f}"
        if self.reps > 1 and (self.min != self.max):
            text += f" ({self.min:,.{digits}f}–{self.max:,.{digits}f})"
        return text

    def verdict(self) -> str:
        if self.met is None:
            return ""
        return "met" if self.met else "NOT met"


def _digits(value: float) -> int:
    size = abs(value)
    if size == 0 or size >= 100:
        return 0
    if size >= 10:
        return 1
    if size >= 1:
        return 2
    return 3


def result(
    section: str,
    name: str,
    values: Sequence[float],
    unit: str,
    *,
    target: tuple[str, float] | None = None,
    note: str = "",
) -> Result:
    """A Result from the repetitions' values; with `target` (operator, bound) the median is checked against it."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{section} / {name}: no values measured")
    median = statistics.median(values)
    met = None
    target_text = ""
    if target is not None:
        operator, bound = target
        met = _OPERATORS[operator](median, bound)
        target_text = f"{_SHOWN[operator]} {bound:g}"
    return Result(section, name, unit, median, min(values), max(values), len(values), target_text, met, note)


def failed(section: str, name: str, error: str) -> Result:
    """A figure that could not be measured: the table says so rather than leaving it out."""
    return Result(section, name, "", float("nan"), float("nan"), float("nan"), 0, note=f"FAILED: {error}")


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def interleaved(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds per call of each variant: `reps` rounds of one call each, so that load drift is shared, each round
    starting one variant later than the previous one (no variant always runs first, on a cold cache)."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(reps):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(timed(variants[name]))
    return seconds


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-repetition ratios of paired measurements."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_commit(root: Path = ROOT) -> str:
    """The checked-out commit, read from .git (no git process), or "unknown"."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12]
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        bases = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for base in bases:
            if (base / ref).is_file():
                return (base / ref).read_text().strip()[:12]
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


def machine_facts() -> dict[str, str]:
    ram_gib = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram_gib,
        "python": platform.python_version(),
        "commit": git_commit(),
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}",
    }


# ------------------------------------------------------------------------------------------------- tables


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    return [
        [r.name, r.value_text(), r.unit, str(r.reps) if r.reps else "", r.target, r.verdict(), r.note] for r in results
    ]


HEADERS = ["figure", "median (min–max)", "unit", "reps", "target", "", "notes"]


def markdown_table(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in table_rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")
    return "\n".join(lines)


def text_table(results: Sequence[Result]) -> str:
    """Fixed-width table for the terminal, a section heading before each section's rows."""
    rows = table_rows(results)
    widths = [max(len(HEADERS[i]), *(len(row[i]) for row in rows)) if rows else len(HEADERS[i]) for i in range(6)]
    out: list[str] = []
    section = None
    for r, row in zip(results, rows, strict=True):
        if r.section != section:
            section = r.section
            out.append(f"\n{section}")
        out.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:6])) + "  " + row[6])
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- standalone scripts


def standalone_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark script takes besides its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller inputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def finish(results: list[Result], json_path: Path | None) -> int:
    """Print the results table, write the JSON file when asked; exit status 1 when a figure failed."""
    print(text_table(results), flush=True)
    if json_path is not None:
        write_json(results, json_path)
    return 1 if any(r.note.startswith("FAILED") for r in results) else 0


def write_json(results: Sequence[Result], path: Path) -> None:
    payload = {"results": [asdict(r) for r in results], "peak_rss_mib": peak_rss_mib()}
    Path(path).write_text(json.dumps(payload, indent=1, allow_nan=True), encoding="utf-8")


def read_json(path: Path) -> tuple[list[Result], float]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Result(**r) for r in payload["results"]], float(payload.get("peak_rss_mib", 0.0))
