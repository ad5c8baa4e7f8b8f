"""The `release` asset and its blocking check `golden_no_regression`.

A release is what `mebot serve` answers with: the index version, the chunks and the models measured on the golden
questions (resources/releases.py keeps them). Each materialization stages a candidate from the newest index,
chunks and golden_summary, and compares every served model's golden fact accuracy and refusal accuracy with the
current release's: it is promoted (data/releases/CURRENT switched) only when none drops by more than
`serve.release.max_drop`. The first release has nothing to compare with and is promoted. A refused candidate stays
on disk for inspection (`mebot release list`), the check fails (blocking: nothing downstream runs), and visitors
keep getting the current release.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mebot.resources.clock import utc_now
from mebot.resources.parquet_io import content_version, markdown_preview
from mebot.resources.releases import ReleaseStore
from mebot.resources.settings import SettingsResource, reads_settings
from mebot.resources.vector_index import CURRENT_FILE, IndexNotFoundError, VectorIndexResource

GATED_METRICS = ("golden_fact_accuracy", "golden_refusal_accuracy")
RECORDED_METRICS = (*GATED_METRICS, "golden_false_refusal_rate", "golden_hit_at_k", "golden_mrr")
GATE_COLUMNS = ["model", "metric", "current", "candidate", "drop", "allowed", "passed"]
CHECK_NAME = "golden_no_regression"
ALWAYS_SERVED = ("rag", "extractive")  # the fine-tuned models come and go with the sweep


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rows: pd.DataFrame  # GATE_COLUMNS, one row per (model, metric) measured in both releases
    notes: list[str] = field(default_factory=list)

    def drops(self) -> dict[str, float]:
        """`<model>.<metric>` -> how much it fell (negative: it rose)."""
        return {f"{r.model}.{r.metric}": round(float(r.drop), 4) for r in self.rows.itertuples(index=False)}

    def failures(self) -> list[str]:
        failed = self.rows[~self.rows["passed"]]
        return [
            f"{r.model} {r.metric.removeprefix('golden_')} not measured (was {r.current:.3f}): the golden questions "
            "could not be asked (see golden_answers' note)"
            if math.isnan(r.candidate)
            else f"{r.model} {r.metric.removeprefix('golden_')} fell {r.drop:.3f} ({r.current:.3f} -> "
            f"{r.candidate:.3f}; at most {r.allowed:.3f} allowed)"
            for r in failed.itertuples(index=False)
        ]


def golden_figures(golden_summary: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """model -> {metric: value} from golden_summary, the values that are numbers (NaN: nothing was counted)."""
    if golden_summary is None or golden_summary.empty or "model" not in golden_summary.columns:
        return {}
    figures: dict[str, dict[str, float]] = {}
    for row in golden_summary.to_dict("records"):
        values = {m: float(row[m]) for m in RECORDED_METRICS if m in row and pd.notna(row[m])}
        figures[str(row["model"])] = values
    return figures


def golden_gate(
    candidate: dict[str, dict[str, float]], current: dict[str, dict[str, float]] | None, max_drop: float
) -> GateResult:
    """Passes when no model measured in the current release lost more than `max_drop` of a GATED_METRICS figure.
    Without a current release (the first run) it passes. A figure of an always-served model (ALWAYS_SERVED) that
    the candidate could not measure fails (a recrawl that loses the golden questions' pages must not pass
    unmeasured); a fine-tuned model the candidate no longer has is noted, not failed."""
    if current is None:
        return GateResult(True, pd.DataFrame(columns=GATE_COLUMNS), ["the first release: nothing to compare with"])
    rows, notes = [], []
    for model, before in sorted(current.items()):
        after = candidate.get(model, {})
        if not after and model not in ALWAYS_SERVED:
            notes.append(f"{model}: served by the current release, not measured in this one")
            continue
        for metric in GATED_METRICS:
            if metric not in before:
                continue
            if metric not in after:  # unmeasured: as bad as it can get
                rows.append([model, metric, before[metric], math.nan, before[metric], max_drop, False])
                continue
            drop = before[metric] - after[metric]
            rows.append([model, metric, before[metric], after[metric], drop, max_drop, drop <= max_drop + 1e-9])
    frame = pd.DataFrame(rows, columns=GATE_COLUMNS)
    return GateResult(bool(frame["passed"].all()) if len(frame) else True, frame, notes)


def index_version_dir(index_dir: str | Path) -> Path:
    """The folder of the index version CURRENT names in `index_dir`."""
    index_dir = Path(index_dir)
    try:
        version = (index_dir / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        version = ""
    if not version or not (index_dir / version).is_dir():
        raise IndexNotFoundError(f"no index yet in {index_dir}: materialize vector_index first")
    return index_dir / version


def gate_metadata(gate: GateResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {f"drop[{k}]": dg.MetadataValue.float(v) for k, v in gate.drops().items()}
    failures = gate.failures()
    metadata["drops"] = dg.MetadataValue.text("; ".join(failures) if failures else "none beyond the limit")
    if gate.notes:
        metadata["notes"] = dg.MetadataValue.text("; ".join(gate.notes))
    if len(gate.rows):
        metadata["comparison"] = dg.MetadataValue.md(markdown_preview(gate.rows, rows=len(gate.rows)))
    return metadata


def release_record(
    figures: dict[str, dict[str, float]], chunks: pd.DataFrame, gate: GateResult, current_id: str | None
) -> dict[str, Any]:
    return {
        "created_at": utc_now(),
        "models": sorted(figures),
        "golden": {m: {k: v for k, v in f.items() if not math.isnan(v)} for m, f in figures.items()},
        "chunks": len(chunks),
        "chunks_version": content_version(chunks, ["chunk_id"]) if "chunk_id" in chunks.columns else "",
        "compared_with": current_id,
        "gate": {"passed": gate.passed, "failures": gate.failures(), "notes": gate.notes, "drops": gate.drops()},
    }


@dg.asset(
    name="release",
    group_name="serving",
    kinds={"json"},
    code_version="2",
    deps=["vector_index"],
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="release",
            blocking=True,
            description="No served model's golden fact accuracy or refusal accuracy fell by more than "
            "serve.release.max_drop against the current release; otherwise the candidate is not promoted.",
        )
    ],
    metadata=reads_settings("serve.release.max_drop"),
)
def release(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    index_store: VectorIndexResource,
    release_store: ReleaseStore,
    golden_summary: pd.DataFrame,
    rag_chunks: pd.DataFrame,
):
    """Stage a release of the newest index, chunks and golden figures; promote it (data/releases/CURRENT) only when
    golden_no_regression passes. Rows: the comparison, one per model and gated metric."""
    config = settings.for_asset(context)
    current = release_store.current()
    figures = golden_figures(golden_summary)
    gate = golden_gate(figures, current.golden if current else None, config.serve.release.max_drop)
    record = release_record(figures, rag_chunks, gate, current.id if current else None)
    staged = release_store.stage(index_version_dir(index_store.index_dir), rag_chunks, record)
    if gate.passed:
        release_store.promote(staged.id)
        context.log.info(f"release {staged.id} promoted: {', '.join(gate.notes) or 'no golden figure fell'}")
    else:
        context.log.error(f"release {staged.id} refused; still serving {current.id}: {'; '.join(gate.failures())}")
    release_store.prune()
    served = staged.id if gate.passed else current.id
    yield dg.Output(
        gate.rows,
        data_version=dg.DataVersion(staged.id),
        metadata={
            "release": dg.MetadataValue.text(staged.id),
            "promoted": dg.MetadataValue.bool(gate.passed),
            "serving": dg.MetadataValue.text(served),
            "index_version": dg.MetadataValue.text(staged.record["index_version"]),
            "models": dg.MetadataValue.json(record["models"]),
            "chunks": dg.MetadataValue.int(len(rag_chunks)),
        },
    )
    yield dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"release": dg.MetadataValue.text(staged.id), **gate_metadata(gate)},
    )
