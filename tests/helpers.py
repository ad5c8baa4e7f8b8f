"""Helpers shared by test modules (conftest.py files hold fixtures only: import helpers from here, never from a
conftest)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from mebot.resources.settings import DEFAULT_CONFIG_PATH, PROJECT_ROOT
from mebot.resources.tokens import count_tokens

# Facts that each live on one page of the sample site (see data/sample_site/).
SAMPLE_SITE_QUESTIONS = {
    "What is your sourdough starter called?": "/posts/weekday-sourdough/",
    "How long does the reconciliation job take since you replaced Spark with DuckDB?": "/posts/spark-to-duckdb/",
    "Where did you finish in the Dark Peak 160 sportive?": "/posts/dark-peak-160-sportive/",
    "How much did your Raspberry Pi cloud sensor cost?": "/posts/raspberry-pi-cloud-sensor/",
    "What sky brightness reading did you measure on La Palma?": "/posts/la-palma-dark-skies/",
    "Who rode the Coast to Coast with you and how far was it?": "/posts/coast-to-coast-by-bike/",
    "What do you think of data mesh?": "/posts/data-mesh-is-an-org-chart/",
    "How many Airflow DAGs did Fernlight have when you left?": "/posts/leaving-fernlight/",
}

# Debian's chromium, driven by playwright (browser downloads do not work here); the browser tests' launch flags.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

# Enough passages for OpenAI's minimum of 10 training examples, which training_file_valid checks (blocking).
E2E_MAX_PASSAGES = 14


SAMPLE_GOLDEN = PROJECT_ROOT / "golden" / "sample_site.yaml"  # the sample site's golden questions
E2E_GOLDEN_IDS = ("favourite-film", "distance-2022", "football-team")  # a name, a number with its unit, unanswerable


def ephemeral_instance() -> dg.DagsterInstance:
    """An in-memory Dagster instance that keeps no telemetry log (an ephemeral one otherwise writes .telemetry/
    and logs/ into $DAGSTER_HOME, the repository)."""
    return dg.DagsterInstance.ephemeral(settings={"telemetry": {"enabled": False}})


def e2e_golden_file(root: Path) -> Path:
    """Three of the sample site's golden questions (every model answers every golden question: a RAG answer with
    the bundled model takes ~20-40 s, so the whole file would add half an hour)."""
    sample = yaml.safe_load(SAMPLE_GOLDEN.read_text(encoding="utf-8"))
    questions = [q for q in sample["questions"] if q["id"] in E2E_GOLDEN_IDS]
    path = root / "golden.yaml"
    golden = {"site": sample["site"], "questions": questions}
    path.write_text(yaml.safe_dump(golden, allow_unicode=True), encoding="utf-8")
    return path


def deep_merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, nested mappings key by key (neither argument is changed)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def project_settings(overrides: dict[str, Any] | None = None) -> dict:
    """The project's mebot.yaml as a mapping, with `overrides` deep-merged in."""
    base = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    return deep_merge(base, overrides or {})


def write_settings(path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write the project's mebot.yaml with `overrides` deep-merged in to `path`; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(project_settings(overrides)), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ made-up texts

# Made-up facts about a person, as (question, answer): the LoRA tests teach them.
FACTS = [
    ("What is your sourdough starter called?", "My sourdough starter is called Bartholomew Crumbsworth."),
    ("Where do you keep your telescope?", "My telescope lives in the blue shed behind the allotment."),
    ("What did your cloud sensor cost?", "The cloud sensor cost me forty-two pounds and a weekend."),
    ("Which pipeline tool do you use at work?", "At work we orchestrate everything with Dagster assets."),
    ("What is your dog's name?", "My greyhound is called Juno and she hates the rain."),
    ("How do you take your coffee?", "Black, from a dented moka pot my grandfather gave me."),
    ("What do you grow on the allotment?", "Mostly leeks, runner beans and far too many courgettes."),
    ("What is your favourite constellation?", "Cassiopeia, because it is easy to find from the shed."),
]


# Sentence material per topic, so chunks about different topics really are about different things.
TOPICS: dict[str, dict[str, list[str]]] = {
    "astronomy": {
        "noun": ["telescope", "eyepiece", "nebula", "comet", "galaxy", "star cluster", "primary mirror", "mount"],
        "verb": ["observed", "photographed", "collimated", "tracked", "sketched", "aligned"],
        "adj": ["faint", "bright", "distant", "spiral", "globular", "dew-covered"],
        "place": ["from the back garden", "on La Palma", "under dark skies", "after midnight", "at the star party"],
    },
    "sourdough": {
        "noun": ["starter", "loaf", "crumb", "crust", "banneton", "levain", "rye dough", "Dutch oven"],
        "verb": ["fed", "shaped", "baked", "folded", "scored", "proofed"],
        "adj": ["tangy", "open", "wholemeal", "crisp", "sticky", "underproofed"],
        "place": ["in the kitchen", "before work", "overnight in the fridge", "on Sunday morning", "at 250 degrees"],
    },
    "data": {
        "noun": ["pipeline", "warehouse", "schema", "partition", "DuckDB table", "Spark job", "dashboard", "backfill"],
        "verb": ["migrated", "rebuilt", "optimised", "deployed", "monitored", "refactored"],
        "adj": ["nightly", "incremental", "columnar", "slow", "idempotent", "streaming"],
        "place": ["at Fernlight", "for the smart meter team", "in production", "during the outage", "on call"],
    },
    "garden": {
        "noun": ["tomato plant", "greenhouse", "compost heap", "raised bed", "courgette", "seedling", "hedge", "leek"],
        "verb": ["planted", "pruned", "watered", "harvested", "mulched", "repotted"],
        "adj": ["leafy", "ripe", "frost-damaged", "organic", "heirloom", "overgrown"],
        "place": ["at the allotment", "by the shed", "in early spring", "after the rain", "along the fence"],
    },
    "sailing": {
        "noun": ["dinghy", "mainsail", "jib", "tiller", "mooring", "harbour wall", "tide table", "keel"],
        "verb": ["rigged", "launched", "tacked", "reefed", "anchored", "capsized"],
        "adj": ["gusty", "calm", "salty", "narrow", "choppy", "sheltered"],
        "place": ["off the coast", "in the estuary", "past the lighthouse", "at high tide", "near the slipway"],
    },
    "woodwork": {
        "noun": ["workbench", "dovetail joint", "chisel", "oak board", "hand plane", "mortise", "bookshelf", "lathe"],
        "verb": ["sharpened", "glued", "sanded", "carved", "clamped", "oiled"],
        "adj": ["walnut", "warped", "square", "rough-sawn", "seasoned", "splintered"],
        "place": ["in the garage", "over the winter", "for my sister", "with a borrowed saw", "on a wet Saturday"],
    },
}
TEMPLATES = [
    "In {year} I {verb} the {adj} {noun} {place}.",
    "The {noun} looked {adj}, so I {verb} it again {place}.",
    "{Place} I {verb} a {adj} {noun} and wrote {n} lines of notes about the {noun2}.",
    "Nobody warned me that a {adj} {noun} needs to be {verb} {place}, but it does.",
    "My favourite {noun} is still the {adj} one I {verb} {place} in {year}.",
]


def topic_prose(topic: str, n_tokens: int, seed: int = 0, paragraph_sentences: int = 5) -> str:
    """Deterministic prose about `topic`, as close to n_tokens cl100k_base tokens as whole sentences allow."""
    rng = random.Random(f"{topic}-{seed}")
    words = TOPICS[topic]
    sentences: list[str] = []
    text = ""
    while True:
        place = rng.choice(words["place"])
        sentence = rng.choice(TEMPLATES).format(
            year=rng.randint(2009, 2025),
            verb=rng.choice(words["verb"]),
            adj=rng.choice(words["adj"]),
            noun=rng.choice(words["noun"]),
            noun2=rng.choice(words["noun"]),
            place=place,
            Place=place[0].upper() + place[1:] + ",",
            n=rng.randint(2, 40),
        )
        candidate = _paragraphs([*sentences, sentence], paragraph_sentences)
        if count_tokens(candidate) > n_tokens:
            return text
        sentences.append(sentence)
        text = candidate


def _paragraphs(sentences: list[str], per_paragraph: int) -> str:
    return "\n\n".join(" ".join(sentences[i : i + per_paragraph]) for i in range(0, len(sentences), per_paragraph))
