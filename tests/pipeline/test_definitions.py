"""build_definitions builds every asset from the settings file it is given, partitions included, and importing the
assets reads no settings file; and the whole graph (every asset spec, check, job, schedule and sensor) matches the
committed snapshot, so an accidental graph change shows in review.

After an intended change: `make snapshot` (or MEBOT_UPDATE_SNAPSHOTS=1 pytest tests/pipeline/test_definitions.py),
then review and commit tests/pipeline/snapshots/definitions.json."""

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mebot.pipeline.definitions import build_definitions
from mebot.resources.settings import DEFAULT_CONFIG_PATH, sections_of

PER_MODEL = ["model_answers", "rouge_scores", "judge_scores", "golden_answers", "golden_scores"]


def partition_keys(defs: dg.Definitions) -> dict[str, list[str]]:
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): graph.get(key).partitions_def.get_partition_keys()
        for key in graph.get_all_asset_keys()
        if graph.get(key).partitions_def is not None
        and not isinstance(graph.get(key).partitions_def, dg.TimeWindowPartitionsDefinition)  # days: not settings
    }


def test_partitions_follow_the_settings_file_given_not_the_default_one(make_config, monkeypatch):
    monkeypatch.delenv("MEBOT_CONFIG", raising=False)
    sweep = {
        "n_epochs": [1, 2],
        "batch_size": [4],
        "learning_rate_multiplier": [0.5, 1.0],
        "lora_r": [8],
        "lora_alpha": [16],
    }
    points = ["e1-b4-lr0.5", "e1-b4-lr1", "e2-b4-lr0.5", "e2-b4-lr1"]
    keys = partition_keys(build_definitions(make_config({"finetune": {"sweep": sweep}})))
    assert keys == {"finetuned_models": points, **{name: ["rag", "extractive", *points] for name in PER_MODEL}}

    default = partition_keys(build_definitions(DEFAULT_CONFIG_PATH))
    assert default["finetuned_models"] == ["e1-b2-lr0.5", "e1-b2-lr2"]
    assert all(default[name] == ["rag", "extractive", "e1-b2-lr0.5", "e1-b2-lr2"] for name in PER_MODEL)


def test_every_group_builds_its_assets_and_checks():
    graph = build_definitions(DEFAULT_CONFIG_PATH).resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert sorted(set(groups.values())) == ["evaluation", "finetune", "index", "ingest", "qa", "serving", "visitors"]
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert {("rag_chunks", "rag_chunks_within_token_limit"), ("finetune_dataset", "training_file_valid")} <= checks
    assert ("judge_scores", "judge_validity") in checks
    assert ("release", "golden_no_regression") in checks


def test_importing_every_asset_module_reads_no_settings_file(tmp_path):
    """With MEBOT_CONFIG naming a file that does not exist, any settings read at import would fail."""
    code = (
        "import importlib, pkgutil, mebot.assets as a\n"
        "names = [m.name for m in pkgutil.walk_packages(a.__path__, 'mebot.assets.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "print(len(names))\n"
    )
    env = {"MEBOT_CONFIG": str(tmp_path / "missing.yaml"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 30  # every module of every group was imported


# ------------------------------------------------------------------------------------------------- snapshot

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_ENV = "MEBOT_UPDATE_SNAPSHOTS"
UPDATE_COMMAND = f"{UPDATE_ENV}=1 pytest tests/pipeline/test_definitions.py (or: make snapshot)"


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> list[str] | None:
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):  # grows every day: its rule, not its keys
        return [str(partitions_def)]
    return None if partitions_def is None else list(partitions_def.get_partition_keys())


def _condition(condition: dg.AutomationCondition | None) -> str | None:
    return None if condition is None else (condition.get_label() or condition.name)


def _asset_entry(assets_def: dg.AssetsDefinition, spec: dg.AssetSpec) -> dict[str, Any]:
    # The code version without its settings stamp ("2+s<hash of the settings read>"): editing a value in
    # mebot.yaml is not a graph change; bumping a code version or reading other settings is.
    return {
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "code_version": (spec.code_version or "").split("+s")[0] or None,
        "settings_read": list(sections_of(spec.metadata)),
        "partitions": _partitions(assets_def.partitions_def),
        "deps": {
            dep.asset_key.to_user_string(): type(dep.partition_mapping).__name__ if dep.partition_mapping else None
            for dep in sorted(spec.deps, key=lambda d: d.asset_key.to_user_string())
        },
        "automation": _condition(spec.automation_condition),
        "resources": sorted(assets_def.required_resource_keys),
        "tags": {k: v for k, v in sorted(spec.tags.items()) if not k.startswith("dagster/kind/")},
        "owners": list(spec.owners),
        "executable": assets_def.is_executable,
    }


def _check_entry(spec: dg.AssetCheckSpec, inline: bool) -> dict[str, Any]:
    return {
        "blocking": spec.blocking,
        "additional_deps": sorted(d.asset_key.to_user_string() for d in spec.additional_deps),
        "partitions": _partitions(getattr(spec, "partitions_def", None)),
        "defined": "with its asset" if inline else "@asset_check",
    }


def definitions_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """What the graph is, as plain JSON data: keyed by name, sorted, no descriptions and no absolute paths."""
    assets: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for assets_def in defs.assets or []:
        for spec in assets_def.specs:
            assets[spec.key.to_user_string()] = _asset_entry(assets_def, spec)
        for check in assets_def.check_specs:
            checks[f"{check.asset_key.to_user_string()}:{check.name}"] = _check_entry(check, inline=True)
    for checks_def in defs.asset_checks or []:
        for check in checks_def.check_specs:
            checks[f"{check.asset_key.to_user_string()}:{check.name}"] = _check_entry(check, inline=False)
    jobs = {
        job.name: {
            "assets": sorted(key.to_user_string() for key in job.asset_layer.executable_asset_keys),
            "partitions": _partitions(job.partitions_def),
            "executor": job.executor_def.name,
        }
        for job in defs.get_repository_def().get_all_jobs()
        if not job.name.startswith("__ASSET_JOB")
    }
    schedules = {
        s.name: {"job": s.job_name, "cron": s.cron_schedule, "default_status": s.default_status.value}
        for s in defs.schedules or []
    }
    sensors = {s.name: {"type": type(s).__name__, "default_status": s.default_status.value} for s in defs.sensors or []}
    return {
        "assets": dict(sorted(assets.items())),
        "checks": dict(sorted(checks.items())),
        "jobs": dict(sorted(jobs.items())),
        "schedules": dict(sorted(schedules.items())),
        "sensors": dict(sorted(sensors.items())),
        "resources": sorted(defs.resources or {}),
    }


def snapshot_text(defs: dg.Definitions) -> str:
    return json.dumps(definitions_snapshot(defs), indent=1, sort_keys=True) + "\n"


def test_definitions_match_the_committed_snapshot(monkeypatch):
    """Every asset spec, check, job, schedule and sensor of the default mebot.yaml, as committed."""
    monkeypatch.delenv("MEBOT_CONFIG", raising=False)
    live = snapshot_text(build_definitions(DEFAULT_CONFIG_PATH))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(live, encoding="utf-8")
        print(f"wrote {SNAPSHOT}: review the diff (git diff) and commit it")
        return
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} is missing; write it with: {UPDATE_COMMAND}"
    committed = SNAPSHOT.read_text(encoding="utf-8")
    if live != committed:
        diff = "\n".join(
            difflib.unified_diff(
                committed.splitlines(), live.splitlines(), "committed snapshot", "build_definitions()", lineterm=""
            )
        )
        pytest.fail(
            f"the asset graph is not the committed snapshot (tests/pipeline/snapshots/{SNAPSHOT.name}):\n"
            f"{diff}\n\nIf the change is intended, update the snapshot: {UPDATE_COMMAND}, and commit it.",
            pytrace=False,
        )


def test_the_snapshot_shows_a_changed_graph(monkeypatch):
    """The comparison is not vacuous: a bumped code version, a dropped check or a renamed job shows."""
    monkeypatch.delenv("MEBOT_CONFIG", raising=False)
    snapshot = definitions_snapshot(build_definitions(DEFAULT_CONFIG_PATH))
    assert {"raw_pages", "rag_chunks", "vector_index", "synthetic_qa", "finetuned_models", "leaderboard"} <= set(
        snapshot["assets"]
    )
    assert snapshot["checks"]["rag_chunks:rag_chunks_within_token_limit"]["blocking"] is True
    assert snapshot["jobs"]["ingest"]["assets"] == ["chunk_embeddings", "rag_chunks", "raw_pages", "vector_index"]
    assert snapshot["schedules"]["recrawl"]["job"] == "ingest"
    assert snapshot["assets"]["model_answers"]["partitions"][0] == "rag"
    assert snapshot["assets"]["rag_chunks"]["settings_read"] == ["rag.chunk_tokens", "rag.overlap_tokens"]
