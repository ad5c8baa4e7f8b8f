"""Stage 5: passages worth a question (`qa_chunks`) and the questions a chat model writes for them (`synthetic_qa`).

Passages: page text split into `qa.chunk_tokens` cl100k_base-token chunks (the same splitter as `rag_chunks`),
minus boilerplate (`qa.drop_patterns`) and passages under `qa.min_tokens` tokens. The answer passage is the whole
chunk, or its longest paragraph (`qa.passage: longest_paragraph`, the original author's choice); `min_tokens`
applies to the passage, since that is the answer a question is written for.

Questions: `qa.questions_per_chunk` distinct questions per passage, written in rounds (question 1 of every
passage, then question 2, …) through `ChatClient.complete_batch`. Every call of a round shares one seed derived
from `qa.seed`, the round and the attempt, so question 2 of a passage is sampled with another seed than question
1. Each output is cleaned (`clean_question`) and judged (`rejection_reason`): empty, over `qa.max_question_chars`,
not a question, cut off by `qa.max_tokens` before a "?", or a duplicate of a question already kept (anywhere on
the site: a question text shared by two passages could otherwise land in train and test) is rejected. A rejected
output is retried once with another seed (and, after a duplicate, or when `qa.temperature` is 0 and seeds change
nothing, with the questions that already exist listed in the prompt); a second rejection drops that question and
counts it. A model that never writes a question gives an empty table with the counts, not a crash. The LLM call
cache makes a re-run repeat no finished call.

Small local models: with the default prompt (instruction, then the passage) SmolLM2-135M mostly continues the
passage instead of asking (1 question in 24 outputs on the sample site); with the instruction after the passage
it wrote a question in about 2 of 3 outputs. The prompt is `qa.prompt` in mebot.yaml.

Held-out splits (`qa.split`), deterministic given `qa.seed`:
- `by_question`: per passage the questions (in a seeded order) are: the first → train, the second → held out,
  any further ones → train (more paraphrases of material the model learns). The held-out question goes to
  validation for a seeded `qa.validation_fraction` of the passages and to test for the rest, so validation and
  test both ask about material the model trained on, in words it did not see (with a validation fraction above
  0 and at least two held-out questions, validation gets one and test keeps one). Every passage trains, so
  `qa.train_fraction` plays no part here. A passage left with one question has no held-out question.
- `by_page`: pages are ordered by a seeded hash of their URL and cut into train / validation / test by
  `qa.train_fraction` and `qa.validation_fraction` (test: the rest); every question of a page has the page's
  split. Tests generalisation to pages never trained on.
- `none`: the original, leaky protocol: every question is a train row AND appears again as a test row (same
  question, answer, chunk_id; the split is part of `qa_id`, so `qa_id` stays unique per row).
"""

import hashlib
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from assets.chunks import chunk_id, split_text
from pipeline.settings import QaSettings, SettingsResource, reads_settings
from pipeline.tokens import count_tokens
from resources.chat import ChatClient, ChatModelResource
from resources.parquet_io import content_version, markdown_preview

QA_CHUNK_COLUMNS = ["chunk_id", "url", "title", "chunk_index", "passage", "n_tokens"]
SYNTHETIC_QA_COLUMNS = ["qa_id", "question", "answer", "chunk_id", "url", "title", "split"]
SPLITS = ("train", "validation", "test")

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
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[A-Za-z']+")
_LETTER = re.compile(r"[^\W\d_]")  # a letter in any script
_TERM = re.compile(r"[^\W_]+")  # letters and digits in any script


class NoPassagesError(ValueError):
    """The relevance filter left no passage; the message names the settings to loosen."""


# ------------------------------------------------------------------------------------------------ passages


def longest_paragraph(text: str) -> str:
    """The paragraph (blank-line separated) with the most cl100k_base tokens; the first of equals."""
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if not paragraphs:
        return ""
    return max(paragraphs, key=count_tokens)  # max keeps the first of equal ones


def drop_reason(passage: str, chunk_text: str, min_tokens: int, patterns: list[re.Pattern]) -> str | None:
    """Why a chunk gets no question: "boilerplate" (a drop pattern matches the chunk), "too_short" (the passage
    has fewer than min_tokens tokens), or None when it is kept."""
    if any(p.search(chunk_text) for p in patterns):
        return "boilerplate"
    if not passage.strip() or count_tokens(passage) < min_tokens:
        return "too_short"
    return None


def build_qa_chunks(pages: pd.DataFrame, qa: QaSettings) -> tuple[pd.DataFrame, Counter]:
    """Kept passages with provenance, and the number of chunks dropped per reason."""
    patterns = [re.compile(p) for p in qa.drop_patterns]
    dropped: Counter = Counter()
    rows = []
    for page in pages.itertuples(index=False):
        if page.status >= 400 or not str(page.text or "").strip():
            continue
        for position, text in enumerate(split_text(page.text, qa.chunk_tokens, qa.overlap_tokens)):
            passage = longest_paragraph(text) if qa.passage == "longest_paragraph" else text
            reason = drop_reason(passage, text, qa.min_tokens, patterns)
            if reason:
                dropped[reason] += 1
                continue
            rows.append(
                {
                    "chunk_id": chunk_id(page.url, position, text),
                    "url": page.url,
                    "title": page.title,
                    "chunk_index": position,
                    "passage": passage,
                    "n_tokens": count_tokens(passage),
                }
            )
    frame = pd.DataFrame(rows, columns=QA_CHUNK_COLUMNS).astype({"chunk_index": "int64", "n_tokens": "int64"})
    return frame, dropped


def explain_no_passages(pages: pd.DataFrame, dropped: Counter, qa: QaSettings) -> str:
    usable = pages[(pages["status"] < 400) & (pages["text"].fillna("").str.strip() != "")]
    if usable.empty:
        return (
            f"no passages for questions: raw_pages has no page with text ({len(pages)} rows, none with status < 400 "
            "and text); check the crawl (site.start_urls, site.content_selectors)"
        )
    hint = "lower qa.min_tokens or remove patterns from qa.drop_patterns"
    if qa.passage != "chunk":
        hint = "lower qa.min_tokens, remove patterns from qa.drop_patterns, or set qa.passage: chunk"
    return (
        f"no passages left after the relevance filter: of {sum(dropped.values())} chunks from {len(usable)} pages, "
        f"{dropped['too_short']} have fewer than qa.min_tokens = {qa.min_tokens} tokens"
        + (" in their longest paragraph" if qa.passage == "longest_paragraph" else "")
        + f" and {dropped['boilerplate']} match qa.drop_patterns. Loosen the filter: {hint}"
    )


# ----------------------------------------------------------------------------------------------- questions


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
    return int(hashlib.sha256(f"{base_seed}:{question_index}:{attempt}".encode()).hexdigest()[:8], 16)


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


# ------------------------------------------------------------------------------------------------ splits


def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) from the seed and the parts: the same inputs, the same number."""
    digest = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def split_by_question(chunk_ids: list[str], counts: dict[str, int], qa: QaSettings) -> dict[tuple[str, int], str]:
    """(chunk_id, question index) → split. Per passage, in a seeded order: first → train, second → validation
    (for a seeded qa.validation_fraction of the passages that have a second question, at least one when the
    fraction is above 0 and two such passages exist) or test, the rest → train."""
    held_out_passages = sorted(
        (cid for cid in dict.fromkeys(chunk_ids) if counts.get(cid, 0) >= 2),
        key=lambda cid: (_unit(qa.seed, "validation", cid), cid),
    )
    n_validation = round(qa.validation_fraction * len(held_out_passages))
    if qa.validation_fraction > 0 and len(held_out_passages) >= 2:
        n_validation = min(max(n_validation, 1), len(held_out_passages) - 1)
    validation = set(held_out_passages[:n_validation])
    splits = {}
    for cid in chunk_ids:
        order = list(range(counts.get(cid, 0)))
        random.Random(f"{qa.seed}:{cid}").shuffle(order)
        held_out = "validation" if cid in validation else "test"
        for rank, index in enumerate(order):
            splits[(cid, index)] = held_out if rank == 1 else "train"
    return splits


def split_pages(urls: list[str], qa: QaSettings) -> dict[str, str]:
    """url → split for by_page: pages in a seeded hash order, cut by the train and validation fractions (test
    gets the rest). With at least two pages, train and (when its fraction is above 0) test get one each."""
    ordered = sorted(set(urls), key=lambda url: (_unit(qa.seed, "page", url), url))
    n = len(ordered)
    test_fraction = max(0.0, 1.0 - qa.train_fraction - qa.validation_fraction)
    n_train = min(n, max(1, round(qa.train_fraction * n)))
    n_validation = min(n - n_train, round(qa.validation_fraction * n))
    if test_fraction > 1e-9 and n >= 2 and n_train + n_validation >= n:
        if n_validation > 0:
            n_validation -= 1
        elif n_train > 1:
            n_train -= 1
    return {
        url: "train" if i < n_train else "validation" if i < n_train + n_validation else "test"
        for i, url in enumerate(ordered)
    }


def sample_passages(passages: pd.DataFrame, max_passages: int, seed: int) -> pd.DataFrame:
    """At most `max_passages` passages (0: all), spread over the pages: pages take turns (in a seeded order), each
    giving its next passage in a seeded order. Kept passages stay in their original order, so growing the
    sample only adds passages and every earlier question stays cached."""
    if max_passages <= 0 or len(passages) <= max_passages:
        return passages
    chunk_ids = list(passages["chunk_id"])
    by_page: dict[str, list[int]] = {}
    for position, url in enumerate(passages["url"]):
        by_page.setdefault(url, []).append(position)
    for positions in by_page.values():
        positions.sort(key=lambda i: _unit(seed, "passage", chunk_ids[i]))
    pages = sorted(by_page, key=lambda url: (_unit(seed, "page-turn", url), url))
    chosen: list[int] = []
    while len(chosen) < max_passages:
        for url in pages:
            if by_page[url] and len(chosen) < max_passages:
                chosen.append(by_page[url].pop(0))
    return passages.iloc[sorted(chosen)].reset_index(drop=True)


def qa_id(chunk: str, question: str, split: str) -> str:
    return hashlib.sha256(f"{chunk}\x00{question}\x00{split}".encode()).hexdigest()[:16]


def assign_splits(passages: pd.DataFrame, questions: dict[str, list[str]], qa: QaSettings) -> pd.DataFrame:
    """The synthetic_qa table: one row per question (two per question in `none` mode) with its split."""
    chunk_ids = list(passages["chunk_id"])
    by_question = split_by_question(chunk_ids, {c: len(qs) for c, qs in questions.items()}, qa)
    by_page = split_pages(list(passages["url"]), qa)
    rows = []
    for passage in passages.itertuples(index=False):
        for index, question in enumerate(questions.get(passage.chunk_id, [])):
            if qa.split == "by_question":
                splits = [by_question[(passage.chunk_id, index)]]
            elif qa.split == "by_page":
                splits = [by_page[passage.url]]
            else:
                splits = ["train", "test"]
            for split in splits:
                rows.append(
                    {
                        "qa_id": qa_id(passage.chunk_id, question, split),
                        "question": question,
                        "answer": passage.passage,
                        "chunk_id": passage.chunk_id,
                        "url": passage.url,
                        "title": passage.title,
                        "split": split,
                    }
                )
    frame = pd.DataFrame(rows, columns=SYNTHETIC_QA_COLUMNS)
    if qa.split == "none":  # train rows first, then their test copies
        frame = frame.sort_values("split", key=lambda s: s.map(SPLITS.index), kind="stable").reset_index(drop=True)
    return frame


# -------------------------------------------------------------------------------------------------- assets


@dg.asset(
    group_name="qa",
    kinds={"langchain", "parquet"},
    code_version="1",
    metadata=reads_settings("qa.chunk_tokens", "qa.overlap_tokens", "qa.min_tokens", "qa.drop_patterns", "qa.passage"),
)
def qa_chunks(
    context: dg.AssetExecutionContext, settings: SettingsResource, raw_pages: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Passages worth a question: page text in chunks of at most `qa.chunk_tokens` tokens, without boilerplate
    (`qa.drop_patterns`) or passages under `qa.min_tokens` tokens. The passage is the chunk, or its longest
    paragraph with `qa.passage: longest_paragraph`; it is the answer of the questions written for it."""
    qa = settings.for_asset(context).qa
    frame, dropped = build_qa_chunks(raw_pages, qa)
    if frame.empty:
        raise NoPassagesError(explain_no_passages(raw_pages, dropped, qa))
    context.log.info(f"{len(frame)} passages from {frame['url'].nunique()} pages; dropped {dict(dropped)}")
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ["chunk_id", "passage"])),
        metadata={
            "kept": dg.MetadataValue.int(len(frame)),
            "dropped": dg.MetadataValue.json(
                {"boilerplate": dropped["boilerplate"], "too_short": dropped["too_short"]}
            ),
            "pages": dg.MetadataValue.int(int(frame["url"].nunique())),
            "tokens_mean": dg.MetadataValue.float(round(float(frame["n_tokens"].mean()), 1)),
            "tokens_max": dg.MetadataValue.int(int(frame["n_tokens"].max())),
            "passages_preview": dg.MetadataValue.md(markdown_preview(frame[["url", "n_tokens", "passage"]], rows=8)),
        },
    )


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
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ["qa_id", "question", "answer", "split"])),
        metadata={
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
    )
