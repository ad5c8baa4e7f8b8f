"""Training files (`finetune_dataset`), their format check (`training_file_valid`), and the sweep's partitions.

One JSONL file per split in the chat-messages format of `formats.py`, which both backends train on; the check
makes the checks of OpenAI's fine-tuning data-format validator. `sweep_partitions(settings)` keys each sweep
point by its values, so a point keeps its key whatever else is added (docs/fine-tuning.md)."""

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from mebot.assets.finetune.formats import chat_example
from mebot.assets.outputs import content_output
from mebot.resources.files import write_atomically
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import PROJECT_ROOT, Settings, SettingsResource, SweepPoint, reads_settings
from mebot.resources.tokens import encoding

FINETUNE_DATASET_COLUMNS = ["qa_id", "split", "messages_json", "n_tokens"]
SPLITS = ("train", "validation", "test")
LEGACY_SUFFIX = ".legacy.jsonl"  # files of the retired prompt/completion format, removed when found
MIN_TRAIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
CHAT_ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")

# USD per 1M training tokens for OpenAI fine-tuning (supervised), by model family. An ESTIMATE: prices change;
# see https://openai.com/api/pricing. Billed tokens = tokens in the training file x epochs.
OPENAI_TRAINING_PRICE_PER_1M = {
    "gpt-4o-mini": 3.00,
    "gpt-4o": 25.00,
    "gpt-4.1": 25.00,
    "gpt-4.1-mini": 5.00,
    "gpt-4.1-nano": 1.50,
    "gpt-3.5-turbo": 8.00,
}
_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$|-\d{4}$")


# ----------------------------------------------------------------------------------------------------- sweep


def sweep_partitions(settings: Settings) -> dg.StaticPartitionsDefinition:
    """One partition per point of `finetune.sweep` (grid, then points), keyed by the point's readable key (e.g.
    `e1-b2-lr0.5`)."""
    keys = [point.key for point in settings.finetune.sweep_points()]
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:  # settings validation refuses repeated points, so this would be a bug in SweepPoint.key
        raise ValueError(f"finetune.sweep gives repeated partition keys {repeated}")
    return dg.StaticPartitionsDefinition(keys)


def sweep_point(settings: Settings, key: str) -> SweepPoint:
    """The sweep point of a partition key; an unknown key (an edited sweep) names the current ones."""
    points = {point.key: point for point in settings.finetune.sweep_points()}
    if key not in points:
        raise KeyError(f"{key!r} is not a point of finetune.sweep; its points are {', '.join(points)}")
    return points[key]


# ---------------------------------------------------------------------------------------------------- tokens


def num_tokens_from_messages(messages: list[dict]) -> int:
    """Chat tokens as OpenAI's cookbook counts them for fine-tuning files: 3 per message, the tokens of every
    value, 1 more for a name, and 3 that prime the reply (cl100k_base)."""
    enc = encoding()
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(enc.encode(str(value), disallowed_special=()))
            if key == "name":
                total += 1
    return total


def training_price_per_1m(model: str) -> float | None:
    """USD per 1M training tokens for an OpenAI base model (a dated name or a fine-tune of it), None if unknown."""
    name = model.removeprefix("ft:").split(":", 1)[0]
    return OPENAI_TRAINING_PRICE_PER_1M.get(name, OPENAI_TRAINING_PRICE_PER_1M.get(_DATE_SUFFIX.sub("", name)))


def sweep_costs(settings: Settings, training_tokens: int) -> tuple[dict[str, int], dict[str, float | None]]:
    """Per sweep point: billed training tokens (file tokens x epochs) and the estimated OpenAI cost in USD."""
    price = training_price_per_1m(settings.finetune.openai.base_model)
    tokens = {p.key: training_tokens * p.n_epochs for p in settings.finetune.sweep_points()}
    costs = {key: None if price is None else round(n * price / 1_000_000, 4) for key, n in tokens.items()}
    return tokens, costs


# ------------------------------------------------------------------------------------------------- examples


def build_examples(settings: Settings, qa: pd.DataFrame) -> pd.DataFrame:
    """One training example per synthetic_qa row, as chat messages, with its chat token count."""
    rows = []
    for row in qa.itertuples(index=False):
        messages = chat_example(settings, row.question, row.answer)
        rows.append(
            {
                "qa_id": row.qa_id,
                "split": row.split,
                "messages_json": json.dumps(messages, ensure_ascii=False),
                "n_tokens": num_tokens_from_messages(messages),
            }
        )
    return pd.DataFrame(rows, columns=FINETUNE_DATASET_COLUMNS).astype({"n_tokens": "int64"})


def jsonl_lines(examples: pd.DataFrame) -> list[str]:
    """The chat-format training file's lines, one `{"messages": [...]}` per example, in row order."""
    return [json.dumps({"messages": json.loads(m)}, ensure_ascii=False) for m in examples["messages_json"]]


def examples_preview(examples: pd.DataFrame, rows: int = 5) -> str:
    """The first examples as a markdown table: split, question (user message), answer (assistant message)."""
    head = examples.head(rows)
    messages = [json.loads(m) for m in head["messages_json"]]
    table = pd.DataFrame(
        {
            "split": list(head["split"]),
            "question": [next((m["content"] for m in ms if m["role"] == "user"), "") for ms in messages],
            "answer": [next((m["content"] for m in ms if m["role"] == "assistant"), "") for ms in messages],
            "n_tokens": list(head["n_tokens"]),
        }
    )
    return markdown_preview(table, rows=rows)


# ------------------------------------------------------------------------------------------------ validator


@dataclass
class FileReport:
    examples: int = 0
    errors: Counter = field(default_factory=Counter)  # error type -> examples with that error
    max_tokens: int = 0


def validate_chat_lines(lines: Iterable[str], max_example_tokens: int) -> FileReport:
    """OpenAI's chat fine-tuning format checks over JSONL lines; each error type counted once per example."""
    report = FileReport()
    for line in lines:
        if not line.strip():
            continue
        report.examples += 1
        for error in _chat_example_errors(line, max_example_tokens, report):
            report.errors[error] += 1
    return report


def _chat_example_errors(line: str, max_example_tokens: int, report: FileReport) -> set[str]:
    try:
        example = json.loads(line)
    except json.JSONDecodeError:
        return {"invalid_json"}
    if not isinstance(example, dict):
        return {"data_type"}
    messages = example.get("messages")
    if not messages or not isinstance(messages, list):
        return {"missing_messages_list"}
    errors = set()
    for message in messages:
        if not isinstance(message, dict):
            errors.add("data_type")
            continue
        if "role" not in message or "content" not in message:
            errors.add("message_missing_key")
        if any(key not in MESSAGE_KEYS for key in message):
            errors.add("message_unrecognized_key")
        if message.get("role") not in CHAT_ROLES:
            errors.add("unrecognized_role")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            errors.add("missing_content")
    roles = {m.get("role") for m in messages if isinstance(m, dict)}
    if "user" not in roles:
        errors.add("example_missing_user_message")
    if "assistant" not in roles:
        errors.add("example_missing_assistant_message")
    if not errors:
        n_tokens = num_tokens_from_messages(messages)
        report.max_tokens = max(report.max_tokens, n_tokens)
        if n_tokens > max_example_tokens:
            errors.add("example_over_token_limit")
    return errors


def min_train_examples(backend: str) -> int:
    """The fewest train examples `backend` can train on: OpenAI refuses a file with fewer than ten."""
    return MIN_TRAIN_EXAMPLES if backend == "openai" else 1


def validate_files(
    files: "FinetuneFiles", expected: dict[str, int], max_example_tokens: int, min_train: int
) -> tuple[dict[str, FileReport], Counter]:
    """Every split's file against the format checks; `expected` is the example count per split. Returns the
    report per file and the error counts over all files, including a missing or out-of-date file and fewer than
    `min_train` train examples."""
    reports: dict[str, FileReport] = {}
    totals: Counter = Counter()
    for split, n_expected in expected.items():
        path = files.path(split)
        if not path.is_file():
            totals["missing_file"] += 1
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        report = reports[path.name] = validate_chat_lines(lines, max_example_tokens)
        totals.update(report.errors)
        if report.examples != n_expected:
            totals["file_out_of_date"] += 1
    train = reports.get(files.path("train").name)
    if train is None or train.examples < min_train:
        totals["too_few_train_examples"] += 1
    return reports, totals


# ---------------------------------------------------------------------------------------------------- files


class FinetuneFiles(dg.ConfigurableResource):
    """Where the fine-tuning JSONL files live: `<base_dir>/<split>.chat.jsonl`."""

    base_dir: str

    def directory(self) -> Path:
        path = Path(self.base_dir).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"no fine-tuning file for split {split!r}; the splits are {', '.join(SPLITS)}")
        return self.directory() / f"{split}.chat.jsonl"

    def write(self, split: str, lines: list[str]) -> Path:
        """Atomically (temp file, then rename): a crash never leaves half a training file under the real name."""
        return write_atomically(self.path(split), "".join(line + "\n" for line in lines))

    def remove(self, split: str) -> None:
        self.path(split).unlink(missing_ok=True)

    def remove_legacy_files(self) -> list[Path]:
        """Delete files of the retired prompt/completion format (nothing reads them); returns them."""
        directory = self.directory()
        stale = sorted(directory.glob("*" + LEGACY_SUFFIX)) if directory.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


# --------------------------------------------------------------------------------------------------- assets


@dg.asset(
    group_name="finetune",
    kinds={"parquet"},
    code_version="2",
    metadata=reads_settings(
        "finetune.completion_stop",
        "finetune.system_prompt",
        "finetune.max_example_tokens",
        "persona",
        # finetune.sweep and finetune.openai.base_model only feed the cost estimates in the metadata; reading them
        # here would make the training files stale whenever the grid changes
    ),
)
def finetune_dataset(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    finetune_files: FinetuneFiles,
    synthetic_qa: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Training examples from the synthetic questions (question → passage + stop sequence), one per row, as chat
    messages (system, user, assistant), written as JSONL per split (train, validation, test) under the finetune
    directory. Metadata: examples per split, training tokens, and per sweep point the tokens billed (x epochs)
    and an ESTIMATED OpenAI training cost for finetune.openai.base_model."""
    config = settings.for_asset(context)
    examples = build_examples(config, synthetic_qa)
    counts = {split: int((examples["split"] == split).sum()) for split in SPLITS}
    paths = []
    for split in SPLITS:
        rows = examples[examples["split"] == split]
        if rows.empty:
            finetune_files.remove(split)
        else:
            paths.append(str(finetune_files.write(split, jsonl_lines(rows))))
    for stale in finetune_files.remove_legacy_files():
        context.log.info(f"removed {stale.name}: the legacy prompt/completion format is no longer written")
    training_tokens = int(examples.loc[examples["split"] == "train", "n_tokens"].sum())
    epoch_tokens, costs = sweep_costs(config, training_tokens)
    base_model = config.finetune.openai.base_model
    price = training_price_per_1m(base_model)
    backend = config.finetune.backend
    if counts["train"] < min_train_examples(backend):  # what training_file_valid fails on, said where it starts
        context.log.warning(
            f"only {counts['train']} train examples; finetune.backend {backend} needs at least "
            f"{min_train_examples(backend)} (synthetic_qa wrote too few questions: see its metadata)"
        )
    context.log.info(f"examples by split {counts}; {training_tokens} training tokens; wrote {len(paths)} files")
    return content_output(
        examples,
        {
            "examples_by_split": dg.MetadataValue.json(counts),
            "training_tokens": dg.MetadataValue.int(training_tokens),
            "max_example_tokens": dg.MetadataValue.int(int(examples["n_tokens"].max()) if len(examples) else 0),
            "training_tokens_x_epochs": dg.MetadataValue.json(epoch_tokens),
            "estimated_openai_cost_usd": dg.MetadataValue.json(costs),
            "cost_estimate_note": dg.MetadataValue.text(
                f"ESTIMATE for {base_model} at "
                + (
                    f"${price:.2f} per 1M training tokens"
                    if price is not None
                    else "an unknown price (not in the table)"
                )
                + " x epochs, tokens counted with cl100k_base; OpenAI bills its own count at its current prices"
            ),
            "files": dg.MetadataValue.json(paths),
            "directory": dg.MetadataValue.path(str(finetune_files.directory())),
            "examples_preview": dg.MetadataValue.md(examples_preview(examples)),
        },
        version_of=["qa_id", "split", "messages_json"],
    )


@dg.asset_check(
    asset=finetune_dataset,
    blocking=True,
    description="The training files pass OpenAI's format checks: JSON lines with messages, known roles, a user and "
    "an assistant message, no empty content, no example over finetune.max_example_tokens, at least "
    f"{MIN_TRAIN_EXAMPLES} train examples for the openai backend (one for local_lora).",
)
def training_file_valid(
    settings: SettingsResource, finetune_files: FinetuneFiles, finetune_dataset: pd.DataFrame
) -> dg.AssetCheckResult:
    finetune = settings.get().finetune
    limit = finetune.max_example_tokens
    min_train = min_train_examples(finetune.backend)
    expected = {split: int((finetune_dataset["split"] == split).sum()) for split in SPLITS}
    expected = {split: n for split, n in expected.items() if n or split == "train"}
    reports, errors = validate_files(finetune_files, expected, limit, min_train)
    return dg.AssetCheckResult(
        passed=not errors,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "errors": dg.MetadataValue.json(dict(sorted(errors.items()))),
            "examples_per_file": dg.MetadataValue.json({name: r.examples for name, r in sorted(reports.items())}),
            "train_examples": dg.MetadataValue.int(expected.get("train", 0)),
            "min_train_examples": dg.MetadataValue.int(min_train),
            "backend": dg.MetadataValue.text(finetune.backend),
            "max_example_tokens_found": dg.MetadataValue.int(max((r.max_tokens for r in reports.values()), default=0)),
            "max_example_tokens_allowed": dg.MetadataValue.int(limit),
        },
    )
