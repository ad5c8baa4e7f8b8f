"""The questions a chat model writes for the passages (`synthetic_qa`), with their held-out split.

`qa.questions_per_chunk` distinct questions per passage, written in rounds (question 1 of every passage, then
question 2, …) through `ChatClient.complete_batch`. Every call of a round shares one seed derived from `qa.seed`,
the round and the attempt, so question 2 of a passage is sampled with another seed than question 1. Each output
is cleaned (`clean_question`) and judged (`rejection_reason`): empty, over `qa.max_question_chars`, not a
question, cut off by `qa.max_tokens` before a "?", or a duplicate of a question already kept (anywhere on the
site: a question text shared by two passages could otherwise land in train and test) is rejected. A rejected
output is retried once with another seed (and, after a duplicate, or when `qa.temperature` is 0 and seeds change
nothing, with the questions that already exist listed in the prompt); a second rejection drops that question and
counts it. A model that never writes a question gives an empty table with the counts, not a crash. The LLM call
cache makes a re-run repeat no finished call. The splits are `assets/qa/splits.py`.

Small local models: with the default prompt (instruction, then the passage) SmolLM2-135M mostly continues the
passage instead of asking (1 question in 24 outputs on the sample site); with the instruction after the passage
it wrote a question in about 2 of 3 outputs. The prompt is `qa.prompt` in mebot.yaml.
"""

import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from mebot.assets.outputs import content_output
from mebot.assets.qa.splits import SPLITS, assign_splits, sample_passages
from mebot.resources.chat import ChatClient, ChatModelResource
from mebot.resources.hashing import seeded_int
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import QaSettings, SettingsResource, reads_settings

# Words a question may start with when the model forgot the question mark.
QUESTION_WORDS = frozenset(
    "what who whom whose which when where why how is are was were am do does did can could would should will "
    "shall may might must have has had".split()
)
_QUOTES = "\"'`“”‘’«»„"
_LEAD_MARKERS = re.compile(r"^\s*(?:[-*•>#]+\s*|\(?\d{1,2}[.):]\s*|\*\*|__)+")
_PREFIX = re.compile(r"^\s*(?:\*\*|__)?\s*(?:question|q)\s*\d{0,2}\s*(?:[:.)#-]+|$)\s*(?:\*\*|__)?\s*", re.IGNORECASE)
# "Here is a concise question: What …" / "Sure, here's one question: "How …"" — the question follows the colon.
_PREAMBLE = re.compile(r"^[^:?\"“]{0,80}\bquestions?\b[^:?\"“]{0,40}:\s*(\S.*)$", re.IGNORECASE)
_QUOTED_QUESTION = re.compile(r"[\"“«]([^\"”»]*\?)[\"”»]")
_WORD = re.compile(r"[A-Za-z']+")
_LETTER = re.compile(r"[^\W\d_]")  # a letter in any script
_TERM = re.compile(r"[^\W_]+")  # letters and digits in any script


def clean_question(text: str) -> str:
    """The question in a model's output: the first line with content, without "Question:"/"Q:" prefixes,
    numbering, list markers, emphasis and surrounding quotes; a preamble line ending in ":" is skipped, and a
    quoted question inside a line ("Here is one: "What…?"") is taken out of it. Text after the first "?" goes."""
    for raw_line in text.splitlines():
        line = unicodedata.normalize("NFKC", raw_line).strip()
        for _ in range(3):  # "1. **Question:** ..." has several layers
            stripped = _PREFIX.sub("", _LEAD_MARKERS.sub("", line)).strip()
            if stripped == line:
                break
            line = stripped
        line = line.strip("*_ ").strip()
        if not line:
            continue
        quoted = _QUOTED_QUESTION.search(line)
        if quoted and len(quoted.group(1).strip(_QUOTES + " ")) > 3:
            line = quoted.group(1)
        elif line.endswith(":") and "?" not in line:
            continue  # "Here is a concise question:" — the question follows on a later line
        elif preamble := _PREAMBLE.match(line):
            line = preamble.group(1)
        line = line.strip().strip(_QUOTES).strip()
        if "?" in line:
            line = line[: line.index("?") + 1]
        line = line.strip(_QUOTES + " ").strip()
        return " ".join(line.split())
    return ""


def normalize_question(question: str) -> str:
    """Comparison key: case, punctuation and spacing do not make two questions different."""
    return " ".join(_TERM.findall(question.casefold()))


def is_question(text: str) -> bool:
    if "?" in text:
        return True
    words = _WORD.findall(text.lower())
    if not words or words[0] not in QUESTION_WORDS or text.rstrip().endswith("!"):
        return False  # "What a view!" is an exclamation
    if words[0] == "what" and words[1:2] in (["a"], ["an"]):
        return False  # so is "What a pleasure to meet you"
    return not (words[0] == "how" and words[1:2] == ["to"])  # "How to bake bread" is a title


def rejection_reason(question: str, max_chars: int, existing: set[str] = frozenset()) -> str | None:
    """Why a cleaned question is not kept ("empty", "too_long", "not_a_question", "duplicate"), or None."""
    if not _LETTER.search(question):
        return "empty"
    if len(question) > max_chars:
        return "too_long"
    if not is_question(question):
        return "not_a_question"
    if normalize_question(question) in existing:
        return "duplicate"
    return None


def round_seed(base_seed: int, question_index: int, attempt: int) -> int:
    """The sampling seed of every call in one round (question `question_index`, `attempt` 0 or 1)."""
    return seeded_int(base_seed, question_index, attempt, sep=":")


def question_messages(prompt: str, passage: str, existing: list[str]) -> list[dict[str, str]]:
    content = prompt.format(passage=passage)
    if existing:
        listed = "\n".join(f"- {q}" for q in existing)
        content += f"\n\nThese questions already exist; write a different one:\n{listed}"
    return [{"role": "user", "content": content}]


@dataclass
class QuestionStats:
    written: int = 0
    rejected: Counter = field(default_factory=Counter)  # every rejected output, first tries and retries
    dropped: Counter = field(default_factory=Counter)  # questions given up on, by the retry's rejection reason
    retries: int = 0

    @property
    def never_written(self) -> int:
        return sum(self.dropped.values())


def write_questions(
    client: ChatClient,
    passages: pd.DataFrame,
    qa: QaSettings,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, list[str]], QuestionStats]:
    """Up to qa.questions_per_chunk distinct questions per passage (by chunk_id, in writing order)."""
    stats = QuestionStats()
    questions: dict[str, list[str]] = {cid: [] for cid in passages["chunk_id"]}
    seen: set[str] = set()  # normalized questions kept so far, over the whole site
    items = list(passages[["chunk_id", "passage"]].itertuples(index=False))
    for k in range(qa.questions_per_chunk):
        pending = [(item, "", "") for item in items]  # (passage, previous rejection reason, its question)
        for attempt in (0, 1):
            if not pending:
                break
            if attempt:
                stats.retries += len(pending)
            batch = []
            for item, previous, rejected_question in pending:
                existing = questions[item.chunk_id] if qa.temperature == 0 or previous == "duplicate" else []
                if previous == "duplicate" and rejected_question not in existing:
                    existing = [*existing, rejected_question]
                batch.append(question_messages(qa.prompt, item.passage, existing))
            started = time.monotonic()
            results = client.complete_batch(
                batch,
                temperature=qa.temperature,
                max_tokens=qa.max_tokens,
                seed=round_seed(qa.seed, k, attempt),
                on_progress=_progress_logger(log, f"question {k + 1}, attempt {attempt + 1}"),
            )
            retry = []
            rejected = 0
            for (item, _, _), result in zip(pending, results, strict=True):
                question = clean_question(result.text)
                reason = rejection_reason(question, qa.max_question_chars, seen)
                if reason is None and result.finish_reason == "length" and "?" not in question:
                    reason = "cut_off"  # stopped by qa.max_tokens before the question was finished
                if reason is None:
                    questions[item.chunk_id].append(question)
                    seen.add(normalize_question(question))
                    stats.written += 1
                    continue
                stats.rejected[reason] += 1
                rejected += 1
                if attempt == 0:
                    retry.append((item, reason, question))
                else:
                    stats.dropped[reason] += 1
            log(
                f"question {k + 1}, attempt {attempt + 1}: {len(pending)} calls in {time.monotonic() - started:.1f} s, "
                f"{rejected} rejected"
            )
            pending = retry
    return questions, stats


def _progress_logger(log: Callable[[str], None], label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            log(f"{label}: {done}/{total}")

    return report


@dg.asset(
    group_name="qa",
    kinds={"llm", "parquet"},
    code_version="1",
    metadata=reads_settings(
        "qa.prompt",
        "qa.max_passages",
        "qa.questions_per_chunk",
        "qa.max_question_chars",
        "qa.temperature",
        "qa.max_tokens",
        "qa.split",
        "qa.train_fraction",
        "qa.validation_fraction",
        "qa.seed",
        "models.chat",
    ),
)
def synthetic_qa(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    qa_chunks: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Questions whose answer is a passage, written by the chat model with `qa.prompt`: up to
    `qa.questions_per_chunk` distinct ones per passage, cleaned and checked (empty, over-long and non-question
    outputs are retried once, then dropped and counted), with provenance and a held-out split (`qa.split`:
    by_question, by_page, or none — the original leaky protocol). Calls are cached: a re-run repeats none."""
    config = settings.for_asset(context)
    qa = config.qa
    client = chat_model.client(config)
    passages = sample_passages(qa_chunks, qa.max_passages, qa.seed)
    if len(passages) < len(qa_chunks):
        context.log.info(f"writing questions for {len(passages)} of {len(qa_chunks)} passages (qa.max_passages)")
    started = time.monotonic()
    questions, stats = write_questions(client, passages, qa, log=context.log.info)
    seconds = time.monotonic() - started
    frame = assign_splits(passages, questions, qa)
    by_split = {split: int((frame["split"] == split).sum()) for split in SPLITS}
    passages_with = sum(1 for qs in questions.values() if qs)
    if frame.empty:
        context.log.warning(
            f"the chat model ({client.identity}) wrote no usable question for {len(passages)} passages: "
            f"rejected outputs {dict(stats.rejected)}"
        )
    context.log.info(
        f"{stats.written} questions for {passages_with}/{len(passages)} passages in {seconds:.1f} s; "
        f"by split {by_split}; dropped {dict(stats.dropped)}"
    )
    return content_output(
        frame,
        {
            "questions_by_split": dg.MetadataValue.json(by_split),
            "questions_written": dg.MetadataValue.int(stats.written),
            "passages": dg.MetadataValue.int(len(passages)),
            "passages_available": dg.MetadataValue.int(len(qa_chunks)),
            "passages_with_questions": dg.MetadataValue.int(passages_with),
            "questions_never_written": dg.MetadataValue.int(stats.never_written),
            "dropped": dg.MetadataValue.json(dict(sorted(stats.dropped.items()))),
            "rejected_outputs": dg.MetadataValue.json(dict(sorted(stats.rejected.items()))),
            "retries": dg.MetadataValue.int(stats.retries),
            "split_mode": dg.MetadataValue.text(qa.split),
            "seconds": dg.MetadataValue.float(round(seconds, 2)),
            "model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
            "qa_preview": dg.MetadataValue.md(markdown_preview(frame[["split", "question", "answer", "url"]], rows=8)),
        },
        version_of=["qa_id", "question", "answer", "split"],
    )
