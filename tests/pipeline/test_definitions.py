"""build_definitions builds every asset from the settings file it is given, partitions included, and importing the
assets reads no settings file."""

import subprocess
import sys

import dagster as dg

from mebot.pipeline.definitions import build_definitions
from mebot.resources.settings import DEFAULT_CONFIG_PATH

PER_MODEL = ["model_answers", "rouge_scores", "judge_scores"]


def partition_keys(defs: dg.Definitions) -> dict[str, list[str]]:
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): graph.get(key).partitions_def.get_partition_keys()
        for key in graph.get_all_asset_keys()
        if graph.get(key).partitions_def is not None
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
    assert keys == {"finetuned_models": points, **{name: ["rag", *points] for name in PER_MODEL}}

    default = partition_keys(build_definitions(DEFAULT_CONFIG_PATH))
    assert default["finetuned_models"] == ["e1-b2-lr0.5", "e1-b2-lr2"]
    assert all(default[name] == ["rag", "e1-b2-lr0.5", "e1-b2-lr2"] for name in PER_MODEL)


def test_every_group_builds_its_assets_and_checks():
    graph = build_definitions(DEFAULT_CONFIG_PATH).resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert sorted(set(groups.values())) == ["evaluation", "finetune", "index", "ingest", "qa"]
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert {("rag_chunks", "rag_chunks_within_token_limit"), ("finetune_dataset", "training_file_valid")} <= checks
    assert ("judge_scores", "judge_validity") in checks


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
