import json

import dagster as dg
import pandas as pd
import pytest
import yaml

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
)
from mebot.assets.finetune.formats import chat_example
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import (
    DEFAULT_CONFIG_PATH,
    Settings,
    SettingsError,
    SettingsResource,
    load_settings,
    parse_settings,
)
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


def test_an_unknown_partition_key_names_the_sweep_points():
    with pytest.raises(KeyError, match="e1-b2-lr0.5, e1-b2-lr2"):
        sweep_point(Settings(), "e9-b9-lr9")


AUTHORS_NINE = [(4, 0.1, 1), (2, 0.1, 1), (1, 0.1, 1), (2, 0.1, 5), (4, 0.1, 5), (2, 0.05, 1), (2, 0.2, 1)]
AUTHORS_NINE += [(4, 0.05, 1), (4, 0.2, 1)]
AUTHORS_KEYS = ["e4-b1-lr0.1", "e2-b1-lr0.1", "e1-b1-lr0.1", "e2-b5-lr0.1", "e4-b5-lr0.1", "e2-b1-lr0.05"]
AUTHORS_KEYS += ["e2-b1-lr0.2", "e4-b1-lr0.05", "e4-b1-lr0.2"]


def _points(triples) -> list[dict]:
    return [{"n_epochs": e, "learning_rate_multiplier": lr, "batch_size": b} for e, lr, b in triples]


def test_explicit_points_alone_give_one_readable_partition_each_in_their_order():
    settings = parse_settings({"finetune": {"sweep": {"n_epochs": [], "points": _points(AUTHORS_NINE)}}})
    keys = sweep_partitions(settings).get_partition_keys()
    assert keys == AUTHORS_KEYS
    point = sweep_point(settings, "e2-b5-lr0.1")
    assert (point.n_epochs, point.batch_size, point.learning_rate_multiplier) == (2, 5, 0.1)
    assert (point.lora_r, point.lora_alpha) == (8, 16)  # the defaults, so the key carries no LoRA suffix


def test_the_grid_and_the_points_are_united_and_grid_keys_do_not_change():
    grid_only = sweep_partitions(Settings()).get_partition_keys()
    points = [*_points([(4, 0.2, 1)]), {"n_epochs": 1, "learning_rate_multiplier": 0.5, "batch_size": 2, "lora_r": 16}]
    settings = parse_settings({"finetune": {"sweep": {"points": points}}})
    keys = sweep_partitions(settings).get_partition_keys()
    assert keys == [*grid_only, "e4-b1-lr0.2", "e1-b2-lr0.5-r16-a16"]
    assert grid_only == ["e1-b2-lr0.5", "e1-b2-lr2"]  # adding points never renames a grid partition
    assert sweep_point(settings, "e1-b2-lr0.5-r16-a16").lora_r == 16


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"points": _points([(2, 0.1, 1), (2, 0.1, 1)])}, "points[1] (e2-b1-lr0.1) repeats points[0]"),
        ({"points": _points([(1, 2.0, 2)])}, "points[0] (e1-b2-lr2) repeats a point of the grid"),
        ({"points": _points([(1, 0.1, 1), (1, 0.1000000001, 1)])}, "points[1] (e1-b1-lr0.1) repeats points[0]"),
        ({"n_epochs": [], "points": []}, "the sweep has no point"),
        ({"points": [{"n_epochs": 2, "batch_size": 1}]}, "finetune.sweep.points.0.learning_rate_multiplier"),
        ({"points": _points([(0, 0.1, 1)])}, "finetune.sweep.points.0.n_epochs"),
        ({"points": _points([(1, 0.0, 1)])}, "finetune.sweep.points.0.learning_rate_multiplier"),
        ({"points": [{**_points([(1, 0.1, 1)])[0], "epochs": 3}]}, "finetune.sweep.points.0.epochs"),
    ],
    ids=["repeated-point", "point-in-grid", "same-key", "no-point", "missing-key", "zero-epochs", "zero-lr", "typo"],
)
def test_sweep_points_are_validated_with_a_message_naming_the_key(sweep, message):
    with pytest.raises(SettingsError) as caught:
        parse_settings({"finetune": {"sweep": sweep}})
    assert message in str(caught.value)


def test_the_commented_preset_in_mebot_yaml_is_the_authors_nine_jobs():
    """Uncommenting the preset (and emptying the grid, as its comment says) gives the write-up's nine jobs."""
    lines = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").splitlines()
    start = lines.index("    # points:")
    block = []
    for line in lines[start:]:
        if not line.startswith("    #"):
            break
        block.append(line.replace("    # ", "", 1))
    preset = yaml.safe_load("\n".join(block))
    settings = parse_settings({"finetune": {"sweep": {"n_epochs": [], **preset}}})
    assert [p.key for p in settings.finetune.sweep_points()] == AUTHORS_KEYS


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


def test_finetune_dataset_writes_the_chat_format_per_split_and_passes_its_check(tmp_path, make_config):
    config = make_config({"finetune": {"sweep": {"n_epochs": [1, 3], "learning_rate_multiplier": [1.0]}}})
    settings = load_settings(config)
    qa = _qa_frame(12, 2, 3)
    result, evaluation, files = _materialize(tmp_path, config, qa)
    assert result.success and evaluation.passed, evaluation.metadata
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["errors"].value == {}

    for split in ("train", "validation", "test"):
        rows = qa[qa["split"] == split]
        chat = _read_jsonl(files.path(split))
        assert chat == [
            {"messages": chat_example(settings, q, a)} for q, a in zip(rows["question"], rows["answer"], strict=True)
        ]
    first = _read_jsonl(files.path("train"))[0]["messages"]
    # written out, not computed by the code under test: the persona's system message, the question, the passage
    assert first[0] == {
        "role": "system",
        "content": "You are Tobias Renwick. Answer questions about yourself and your writing in your own voice.",
    }
    assert first[1] == {"role": "user", "content": "What happened in year 2000?"}
    assert first[2] == {"role": "assistant", "content": qa["answer"][0] + " END"}
    assert sorted(p.name for p in files.directory().iterdir()) == [
        "test.chat.jsonl",
        "train.chat.jsonl",
        "validation.chat.jsonl",
    ]

    stored = pd.read_parquet(tmp_path / "data" / "finetune_dataset.parquet")
    assert list(stored.columns) == ["qa_id", "split", "messages_json", "n_tokens"]
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
    assert "What happened in year 2000?" in metadata["examples_preview"].value


def test_legacy_prompt_completion_files_are_no_longer_written_and_old_ones_are_removed(tmp_path, make_config):
    """Nothing trains on the legacy format (both backends use the chat file), so a file of it left by an earlier
    version would only mislead: it is deleted when the dataset is rebuilt."""
    directory = tmp_path / "data" / "finetune"
    directory.mkdir(parents=True)
    for split in ("train", "test"):
        (directory / f"{split}.legacy.jsonl").write_text('{"prompt": "QUESTION: x", "completion": " y END"}\n')
    result, evaluation, files = _materialize(tmp_path, make_config(), _qa_frame(12, 0, 2))
    assert result.success and evaluation.passed
    assert sorted(p.name for p in directory.iterdir()) == ["test.chat.jsonl", "train.chat.jsonl"]
    assert not list(directory.glob("*.legacy.jsonl"))


def test_check_fails_below_openais_minimum_of_train_examples_for_the_openai_backend(tmp_path, make_config):
    config = make_config({"finetune": {"backend": "openai"}})
    result, evaluation, files = _materialize(tmp_path, config, _qa_frame(MIN_TRAIN_EXAMPLES - 1, 0, 2))
    assert not result.success  # the blocking check fails the run, so nothing downstream trains on the file
    assert result.asset_materializations_for_node("finetune_dataset")  # the files are written, to inspect
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["errors"].value == {"too_few_train_examples": 1}
    assert evaluation.metadata["min_train_examples"].value == MIN_TRAIN_EXAMPLES


def test_check_lets_the_local_backend_train_on_fewer_than_openais_minimum(tmp_path, make_config):
    """A small site's sample can keep fewer than ten questions (how many the gates keep depends on sampled output,
    which differs between CPUs); a local adapter trains on them, so only OpenAI's minimum blocks at ten."""
    config = make_config({"finetune": {"backend": "local_lora"}})
    result, evaluation, files = _materialize(tmp_path, config, _qa_frame(MIN_TRAIN_EXAMPLES - 1, 0, 2))
    assert result.success and evaluation.passed, evaluation.metadata
    assert evaluation.metadata["min_train_examples"].value == 1


def test_check_fails_without_any_train_example_for_the_local_backend(tmp_path, make_config):
    config = make_config({"finetune": {"backend": "local_lora"}})
    result, evaluation, files = _materialize(tmp_path, config, _qa_frame(0, 0, 2))
    assert not result.success and not evaluation.passed
    assert evaluation.metadata["errors"].value == {"missing_file": 1, "too_few_train_examples": 1}


def test_check_fails_on_empty_content(tmp_path, make_config):
    _, evaluation, _ = _materialize(tmp_path, make_config({"finetune": {"system_prompt": ""}}), _qa_frame(12))
    assert not evaluation.passed
    assert evaluation.metadata["errors"].value == {"missing_content": 12}  # the empty system message, every example


def test_check_fails_on_over_long_examples(tmp_path, make_config):
    qa = _qa_frame(12)
    qa.loc[3, "answer"] = "A very long answer. " * 40
    _, evaluation, _ = _materialize(tmp_path, make_config({"finetune": {"max_example_tokens": 64}}), qa)
    assert not evaluation.passed
    assert evaluation.metadata["errors"].value == {"example_over_token_limit": 1}
    assert evaluation.metadata["max_example_tokens_found"].value > 64


def test_files_of_splits_that_no_longer_exist_are_removed(tmp_path, make_config):
    config = make_config()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12, 3, 3))
    assert evaluation.passed and files.path("validation").is_file()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12, 0, 3))
    assert evaluation.passed
    assert not files.path("validation").exists()
    assert len(_read_jsonl(files.path("test"))) == 3


def test_check_catches_a_training_file_edited_after_the_asset_wrote_it(tmp_path, make_config):
    config = make_config()
    _, evaluation, files = _materialize(tmp_path, config, _qa_frame(12))
    assert evaluation.passed
    path = files.path("train")
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"role": "assistant"', '"role": "bot"')
    path.write_text("\n".join(lines) + "\n")
    settings = SettingsResource(config_path=str(config))
    stored = pd.read_parquet(tmp_path / "data" / "finetune_dataset.parquet")
    result = training_file_valid(settings=settings, finetune_files=files, finetune_dataset=stored)
    assert not result.passed
    assert result.metadata["errors"].value == {"example_missing_assistant_message": 1, "unrecognized_role": 1}
