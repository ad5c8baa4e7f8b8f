import json

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.finetune.dataset import (
    MIN_TRAIN_EXAMPLES,
    FinetuneFiles,
    finetune_dataset,
    num_tokens_from_messages,
    sweep_partitions,
    sweep_point,
    training_file_valid,
    training_price_per_1m,
    validate_chat_lines,
    validate_legacy_lines,
)
from mebot.assets.finetune.formats import chat_example, legacy_example
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import Settings, SettingsResource, load_settings, parse_settings
from mebot.resources.tokens import count_tokens

# ----------------------------------------------------------------------------------------------------- sweep


@pytest.mark.parametrize(
    ("sweep", "keys"),
    [
        ({}, ["e1-b2-lr0.5", "e1-b2-lr2"]),
        ({"n_epochs": [4], "batch_size": [1], "learning_rate_multiplier": [0.2]}, ["e4-b1-lr0.2"]),
        (
            {"n_epochs": [1, 3], "batch_size": [2], "learning_rate_multiplier": [1.0], "lora_r": [8, 16]},
            ["e1-b2-lr1", "e1-b2-lr1-r16-a16", "e3-b2-lr1", "e3-b2-lr1-r16-a16"],
        ),
    ],
)
def test_sweep_partition_keys_are_the_settings_grid_points(sweep, keys):
    settings = parse_settings({"finetune": {"sweep": sweep}})
    partitions = sweep_partitions(settings)
    assert isinstance(partitions, dg.StaticPartitionsDefinition)
    assert partitions.get_partition_keys() == keys == [p.key for p in settings.finetune.sweep_points()]
    for key, point in zip(keys, settings.finetune.sweep_points(), strict=True):
        assert sweep_point(settings, key) == point


def test_default_settings_file_gives_two_sweep_partitions():
    assert len(sweep_partitions(load_settings()).get_partition_keys()) == 2


def test_an_unknown_partition_key_names_the_grid():
    with pytest.raises(KeyError, match="e1-b2-lr0.5, e1-b2-lr2"):
        sweep_point(Settings(), "e9-b9-lr9")


# -------------------------------------------------------------------------------------------------- validator


def _line(messages) -> str:
    return json.dumps({"messages": messages})


GOOD = [
    {"role": "system", "content": "You are Toby."},
    {"role": "user", "content": "What is your starter called?"},
    {"role": "assistant", "content": "Brenda. END"},
]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"messages": [', "invalid_json"),
        ("[1, 2]", "data_type"),
        ('{"prompt": "x"}', "missing_messages_list"),
        ('{"messages": []}', "missing_messages_list"),
        (
            _line([GOOD[0], {"content": "no role"}, GOOD[2]]),
            ("message_missing_key", "unrecognized_role", "example_missing_user_message"),
        ),
        (_line([GOOD[0], {"role": "user"}, GOOD[2]]), ("message_missing_key", "missing_content")),
        (_line([GOOD[0], {**GOOD[1], "mood": "happy"}, GOOD[2]]), "message_unrecognized_key"),
        (_line([{"role": "narrator", "content": "Once upon a time"}, *GOOD[1:]]), "unrecognized_role"),
        (_line([GOOD[0], {"role": "user", "content": ""}, GOOD[2]]), "missing_content"),
        (_line([GOOD[0], {"role": "user", "content": "   "}, GOOD[2]]), "missing_content"),
        (_line([GOOD[0], {"role": "user", "content": None}, GOOD[2]]), "missing_content"),
        (_line([GOOD[0], {"role": "user", "content": ["a list"]}, GOOD[2]]), "missing_content"),
        (_line([{"role": "system", "content": ""}, *GOOD[1:]]), "missing_content"),
        (_line([GOOD[0], GOOD[2]]), "example_missing_user_message"),
        (_line(GOOD[:2]), "example_missing_assistant_message"),
        (_line([GOOD[0], GOOD[1], {"role": "assistant", "content": "word " * 200}]), "example_over_token_limit"),
    ],
)
def test_the_validator_catches_each_malformed_case(line, error):
    report = validate_chat_lines([_line(GOOD), line, _line(GOOD)], max_example_tokens=100)
    assert report.examples == 3
    expected = (error,) if isinstance(error, str) else error
    assert dict(report.errors) == dict.fromkeys(expected, 1)  # once per example, nothing from the good lines


def test_a_well_formed_file_has_no_errors_and_blank_lines_are_ignored():
    report = validate_chat_lines([_line(GOOD), "", _line(GOOD)], max_example_tokens=100)
    assert report.examples == 2 and not report.errors and report.max_tokens == num_tokens_from_messages(GOOD)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("not json", "invalid_json"),
        ('"a string"', "data_type"),
        ('{"prompt": "QUESTION: x\\n\\n###\\n\\n"}', "legacy_missing_content"),
        ('{"prompt": "QUESTION: x", "completion": ""}', "legacy_missing_content"),
        ('{"prompt": "QUESTION: x", "completion": " y END", "extra": 1}', "legacy_unrecognized_key"),
        (json.dumps({"prompt": "QUESTION: x", "completion": " y" * 200}), "example_over_token_limit"),
    ],
)
def test_the_legacy_validator_catches_each_malformed_case(line, error):
    good = json.dumps({"prompt": "QUESTION: x\n\n###\n\n", "completion": " y END"})
    report = validate_legacy_lines([good, line], max_example_tokens=100)
    assert report.examples == 2 and dict(report.errors) == {error: 1}


def test_chat_tokens_are_counted_as_openais_cookbook_counts_them():
    messages = [{"role": "user", "content": "What is your starter called?"}]
    assert num_tokens_from_messages(messages) == 3 + 3 + count_tokens("user") + count_tokens(messages[0]["content"])


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o-mini-2024-07-18", 3.00),
        ("gpt-4o-mini", 3.00),
        ("gpt-4.1-mini-2025-04-14", 5.00),
        ("gpt-4o-2024-08-06", 25.00),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 3.00),
        ("gpt-3.5-turbo-0125", 8.00),
        ("my-own-model", None),
    ],
)
def test_training_prices(model, price):
    assert training_price_per_1m(model) == price


# ---------------------------------------------------------------------------------------------------- the asset


def _qa_frame(n_train: int, n_validation: int = 0, n_test: int = 0) -> pd.DataFrame:
    splits = ["train"] * n_train + ["validation"] * n_validation + ["test"] * n_test
    return pd.DataFrame(
        {
            "qa_id": [f"qa{i}" for i in range(len(splits))],
            "question": [f"What happened in year {2000 + i}?" for i in range(len(splits))],
            "answer": [f"In {2000 + i} I baked {i} loaves of bread with Brenda." for i in range(len(splits))],
            "chunk_id": [f"c{i}" for i in range(len(splits))],
            "url": ["https://x/bread"] * len(splits),
            "title": ["Bread"] * len(splits),
            "split": splits,
        }
    )


def _synthetic_qa_asset(frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name="synthetic_qa")
    def source() -> pd.DataFrame:
        return frame

    return source


def _materialize(tmp_path, config, frame):
    files = FinetuneFiles(base_dir=str(tmp_path / "data" / "finetune"))
    result = dg.materialize(
        [_synthetic_qa_asset(frame), finetune_dataset, training_file_valid],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
            "finetune_files": files,
        },
        raise_on_error=False,  # a failing blocking check fails the run; the tests read its evaluation
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return result, evaluation, files


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_finetune_dataset_writes_both_formats_per_split_and_passes_its_check(tmp_path, make_config):
    config = make_config({"finetune": {"sweep": {"n_epochs": [1, 3], "learning_rate_multiplier": [1.0]}}})
    settings = load_settings(config)
    qa = _qa_frame(12, 2, 3)
    result, evaluation, files = _materialize(tmp_path, config, qa)
    assert result.success and evaluation.passed, evaluation.metadata
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["errors"].value == {}

    for split in ("train", "validation", "test"):
        rows = qa[qa["split"] == split]
        chat = _read_jsonl(files.path(split, "chat"))
        legacy = _read_jsonl(files.path(split, "legacy"))
        assert chat == [
            {"messages": chat_example(settings, q, a)} for q, a in zip(rows["question"], rows["answer"], strict=True)
        ]
        assert legacy == [legacy_example(settings, q, a) for q, a in zip(rows["question"], rows["answer"], strict=True)]
    first = _read_jsonl(files.path("train", "legacy"))[0]
    assert first == {
        "prompt": "QUESTION: What happened in year 2000?\n\n###\n\n",
        "completion": " " + qa["answer"][0] + " END",
    }

    stored = pd.read_parquet(tmp_path / "data" / "finetune_dataset.parquet")
    assert list(stored.columns) == ["qa_id", "split", "messages_json", "prompt", "completion", "n_tokens"]
    assert list(stored["qa_id"]) == list(qa["qa_id"])

    metadata = result.asset_materializations_for_node("finetune_dataset")[0].metadata
    train_tokens = int(stored.loc[stored["split"] == "train", "n_tokens"].sum())
    assert metadata["examples_by_split"].value == {"train": 12, "validation": 2, "test": 3}
    assert metadata["training_tokens"].value == train_tokens
    assert metadata["training_tokens_x_epochs"].value == {"e1-b2-lr1": train_tokens, "e3-b2-lr1": 3 * train_tokens}
    assert metadata["estimated_openai_cost_usd"].value == {
        "e1-b2-lr1": round(train_tokens * 3.00 / 1e6, 4),
        "e3-b2-lr1": round(3 * train_tokens * 3.00 / 1e6, 4),
    }
    assert "ESTIMATE" in metadata["cost_estimate_note"].value


def test_check_fails_below_openais_minimum_of_train_examples(tmp_path, make_config):
    result, evaluation, files = _materialize(tmp_path, make_config(), _qa_frame(MIN_TRAIN_EXAMPLES - 1, 0, 2))
    assert not result.success  # the blocking check fails the run, so nothing downstream trains on the file
    assert result.asset_materializations_for_node("finetune_dataset")  # the files are written, to inspect
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["errors"].value == {"too_few_train_examples": 1}


def test_check_fails_on_empty_content_and_over_long_examples(tmp_path, make_config):
    config = make_config({"finetune": {"system_prompt": "", "max_example_tokens": 64}})
    qa = _qa_frame(12)
    qa.loc[3, "answer"] = "A very long answer. " * 40
    _, evaluation, _ = _materialize(tmp_path, config, qa)
    assert not evaluation.passed
    errors = evaluation.metadata["errors"].value
    assert errors["missing_content"] == 12  # the empty system message, in every chat example
    assert errors["example_over_token_limit"] == 1  # the legacy file's long example (chat stops at content)


def test_files_of_splits_that_no_longer_exist_are_removed(tmp_path, make_config):
    config = make_config()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12, 3, 3))
    assert evaluation.passed and files.path("validation", "chat").is_file()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12, 0, 3))
    assert evaluation.passed
    assert not files.path("validation", "chat").exists() and not files.path("validation", "legacy").exists()
    assert len(_read_jsonl(files.path("test", "chat"))) == 3


def test_check_catches_a_training_file_edited_after_the_asset_wrote_it(tmp_path, make_config):
    config = make_config()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12))
    assert evaluation.passed
    path = files.path("train", "chat")
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"role": "assistant"', '"role": "bot"')
    path.write_text("\n".join(lines) + "\n")
    settings = SettingsResource(config_path=str(config))
    stored = pd.read_parquet(tmp_path / "data" / "finetune_dataset.parquet")
    result = training_file_valid(settings=settings, finetune_files=files, finetune_dataset=stored)
    assert not result.passed
    assert result.metadata["errors"].value == {"example_missing_assistant_message": 1, "unrecognized_role": 1}
