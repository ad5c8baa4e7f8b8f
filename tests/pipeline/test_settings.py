import subprocess
import sys

import pytest
import yaml

from mebot.resources.settings import (
    DEFAULT_CONFIG_PATH,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
    reads_settings,
    sections_of,
    stamped_code_version,
)


def test_project_settings_file_parses_with_the_documented_defaults():
    settings = load_settings(DEFAULT_CONFIG_PATH)
    assert settings.rag.chunk_tokens == 900
    assert settings.rag.overlap_tokens == 100
    assert settings.site.obey_robots_txt is True
    assert settings.site.start_urls == []


def test_every_section_is_present():
    assert set(Settings.model_fields) == {
        "site",
        "persona",
        "rag",
        "qa",
        "models",
        "finetune",
        "eval",
        "serve",
        "budget",
        "run",
    }


@pytest.mark.parametrize(
    ("raw", "expected_fragments"),
    [
        ({"rag": {"chunk_tokens": -5}}, ["rag.chunk_tokens", "-5", "greater than or equal to 50"]),
        ({"rag": {"chunk_tokens": "big"}}, ["rag.chunk_tokens", "'big'", "integer"]),
        ({"rag": {"chunk_tokens": 200, "overlap_tokens": 200}}, ["rag", "overlap_tokens (200)", "smaller than"]),
        ({"rag": {"chunk_tokns": 900}}, ["rag.chunk_tokns", "unknown setting", "chunk_tokens"]),
        ({"site": {"start_urls": ["ftp://example.com/"]}}, ["site.start_urls", "ftp://example.com/", "http(s) URL"]),
        ({"site": {"max_pages": 0}}, ["site.max_pages", "0", "greater than or equal to 1"]),
        ({"site": {"deny": ["(unclosed"]}}, ["site.deny", "(unclosed", "not a valid regular expression"]),
        ({"site": {"recrawl_cron": "weekly"}}, ["site.recrawl_cron", "weekly", "5-field cron"]),
        ({"site": {"obey_robots_txt": "sometimes"}}, ["site.obey_robots_txt", "sometimes", "boolean"]),
        ({"models": {"chat": {"provider": "gpt"}}}, ["models.chat.provider", "'gpt'", "'llama_cpp' or 'openai'"]),
        ({"models": {"chat": {"modle": "x"}}}, ["models.chat.modle", "unknown setting", "provider, model"]),
        ({"rag": {"prompt": "no placeholders"}}, ["rag.prompt", "{context} and {question}"]),
        ({"rag": {"prompt": "{context} {question} {who}"}}, ["rag.prompt", "placeholder other than"]),
        ({"nonsense": {}}, ["nonsense", "unknown setting", "site"]),
        ({"qa": {"gates": ["roundtrip", "roundtrip"]}}, ["qa.gates", "gates repeat"]),
        ({"eval": {"judge_methods": ["direct", "direct"]}}, ["eval.judge_methods", "methods repeat"]),
        ({"finetune": {"sweep": {"n_epochs": [2, 2]}}}, ["finetune.sweep.n_epochs", "values repeat: [2, 2]"]),
        ({"finetune": {"sweep": {"learning_rate_multiplier": [0.5, 0.5]}}}, ["learning_rate_multiplier", "repeat"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(raw, expected_fragments):
    with pytest.raises(SettingsError) as error:
        parse_settings(raw, source="test.yaml")
    message = str(error.value)
    assert "test.yaml" in message
    for fragment in expected_fragments:
        assert fragment in message


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(SettingsError) as error:
        parse_settings({"rag": {"top_k": 0}, "site": {"max_pages": -1}})
    assert "rag.top_k" in str(error.value) and "site.max_pages" in str(error.value)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "site: [unclosed\n"])
def test_a_file_that_is_not_a_mapping_of_sections_is_rejected(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match="bad.yaml"):
        load_settings(path)


def test_missing_file_says_which_path(tmp_path):
    with pytest.raises(SettingsError, match="does-not-exist.yaml does not exist"):
        load_settings(tmp_path / "does-not-exist.yaml")


@pytest.mark.parametrize(
    "text",
    ["persona:\n  name: A\n  name: B\n", "rag:\n  top_k: 3\nsite:\n  max_pages: 5\nrag:\n  top_k: 4\n"],
)
def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path, text):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=r"given twice \(lines \d+ and \d+\)"):
        load_settings(path)


def test_empty_file_means_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path) == Settings()


@pytest.mark.parametrize(
    ("changed", "stale_sections", "fresh_sections"),
    [
        ({"rag": {"top_k": 7}}, [("rag",), ("rag.top_k",)], [("rag.chunk_tokens", "rag.overlap_tokens"), ("qa",)]),
        ({"models": {"chat": {"model": "x"}}}, [("models",), ("models.chat",)], [("models.embedding",)]),
        ({"site": {"max_pages": 3}}, [("site",)], [("rag",), ("persona", "qa")]),
        ({"persona": {"name": "Someone Else"}}, [("persona",)], [("site",), ("rag",)]),
    ],
)
def test_fingerprint_changes_exactly_for_the_sections_that_changed(changed, stale_sections, fresh_sections):
    before, after = Settings(), parse_settings(changed)
    for sections in stale_sections:
        assert before.fingerprint(sections) != after.fingerprint(sections)
    for sections in fresh_sections:
        assert before.fingerprint(sections) == after.fingerprint(sections)


def test_stamped_code_version_keeps_the_base_and_changes_with_settings():
    before, after = Settings(), parse_settings({"rag": {"top_k": 9}})
    assert stamped_code_version("3", before, ("rag",)).startswith("3+s")
    assert stamped_code_version("3", before, ("rag",)) != stamped_code_version("3", after, ("rag",))
    assert stamped_code_version("3", before, ()) == "3"


def test_reads_settings_round_trips_and_rejects_unknown_sections():
    assert sections_of(reads_settings("site", "rag")) == ("site", "rag")
    with pytest.raises(KeyError, match="no settings section 'ragg'"):
        reads_settings("ragg")


def test_cli_rejects_bad_settings_before_doing_any_work(tmp_path):
    config = tmp_path / "mebot.yaml"
    config.write_text(yaml.safe_dump({"rag": {"chunk_tokens": 0}}))
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        env={"MEBOT_DATA_DIR": str(data_dir), "MEBOT_DAGSTER_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "rag.chunk_tokens: got 0" in result.stderr
    assert not data_dir.exists() and not (tmp_path / "home").exists()
