"""The questions a chat model writes for the passages (`synthetic_qa`), with their held-out split.

Written in rounds (question 1 of every passage, then question 2, …), each round with its own seed; each output is
cleaned (`clean_question`), judged (`rejection_reason`, then the gates of assets/qa/gates.py and site-wide
duplicates) and retried once before it is dropped and counted. Splits: assets/qa/splits.py; docs/fine-tuning.md."""

import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from mebot.assets.outputs import content_output
from mebot.assets.qa.gates import GATE_REASON, NO_GATES, Passage, QuestionGates, RoundTrip, TemplateGate
from mebot.assets.qa.splits import SPLITS, assign_splits, sample_passages
from mebot.resources.chat import ChatClient, ChatModelResource, template_head
from mebot.resources.embeddings import EmbedderResource, embed_with_cache
from mebot.resources.hashing import seeded_int
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import (
    FewShotExample,
    QaSettings,
    Settings,
    SettingsResource,
    reads_settings,
    resolve_qa_prompt,
)

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
MAX_REJECT_EXAMPLES = 5  # rejected outputs shown per reason in the metadata
# One sentence that starts like a question (an opener, then a space) and ends at its "?" (the grammar then allows
# nothing more, so generation stops there): no line break, no "." or "!" ending a sentence inside it (a decimal
# point between digits is fine), at most QUESTION_MAX_CHARS characters. What llama.cpp may write when
# qa.constrained is on.
QUESTION_OPENERS = (
    "What Which Who Whom Whose When Where Why How Do Does Did Is Are Was Were Have Has Had Can Could Would Will "
    "Should In On At For After Before Since According"
).split()
QUESTION_MAX_CHARS = 150
QUESTION_GBNF = "\n".join(
    [
        f'root ::= opener " " char{{3,{QUESTION_MAX_CHARS}}} "?"',
        "opener ::= " + " | ".join(f'"{w}"' for w in QUESTION_OPENERS),
        'char ::= [^?\\n.!] | [0-9] "." [0-9]',
    ]
)


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


def question_messages(
    prompt: str, passage: str, existing: list[str], few_shot: Sequence[FewShotExample] = ()
) -> list[dict[str, str]]:
    """The conversation that asks for one question: each few-shot example as a user turn (the prompt with its
    passage) answered by its question, then the prompt with `passage` (and the questions that already exist)."""
    messages: list[dict[str, str]] = []
    for example in few_shot:
        messages.append({"role": "user", "content": prompt.format(passage=example.passage)})
        messages.append({"role": "assistant", "content": example.question})
    content = prompt.format(passage=passage)
    if existing:
        listed = "\n".join(f"- {q}" for q in existing)
        content += f"\n\nThese questions already exist; write a different one:\n{listed}"
    messages.append({"role": "user", "content": content})
    return messages


def question_constraints(client: ChatClient, qa: QaSettings) -> dict[str, str]:
    """`complete` arguments that make the output one question (`qa.constrained`): a GBNF grammar on llama.cpp.
    An OpenAI-compatible server gets the prompt alone (a capable model writes one question when asked)."""
    if qa.constrained and client.provider == "llama_cpp":
        return {"grammar": QUESTION_GBNF}
    return {}


@dataclass
class QuestionStats:
    written: int = 0
    rejected: Counter = field(default_factory=Counter)  # every rejected output, first tries and retries
    dropped: Counter = field(default_factory=Counter)  # questions given up on, by the retry's rejection reason
    retries: int = 0
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # a few rejects per reason
    gated: int = 0  # outputs that were questions and reached the quality gates (qa.gates)

    @property
    def never_written(self) -> int:
        return sum(self.dropped.values())

    def reject(self, reason: str, question: str, url: str, attempt: int) -> None:
        self.rejected[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_REJECT_EXAMPLES:
            shown.append({"question": question, "url": url, "attempt": str(attempt + 1)})


def write_questions(
    client: ChatClient,
    passages: pd.DataFrame,
    qa: QaSettings,
    log: Callable[[str], None] = lambda message: None,
    gates: QuestionGates = NO_GATES,
) -> tuple[dict[str, list[str]], QuestionStats]:
    """Up to qa.questions_per_chunk distinct questions per passage (by chunk_id, in writing order), each one
    past `gates` (the quality gates of `qa.gates`; none by default)."""
    stats = QuestionStats()
    questions: dict[str, list[str]] = {cid: [] for cid in passages["chunk_id"]}
    seen: set[str] = set()  # normalized questions kept so far, over the whole site
    items = list(passages[["chunk_id", "passage", "url"]].itertuples(index=False))
    prompt = resolve_qa_prompt(qa.prompt)
    few_shot = list(qa.few_shot)
    constraints = question_constraints(client, qa)
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
                batch.append(question_messages(prompt, item.passage, existing, few_shot))
            started = time.monotonic()
            results = client.complete_batch(
                batch,
                prompt_prefix=template_head(prompt),  # the few-shot turns and the prompt's head: evaluated once
                temperature=qa.temperature,
                max_tokens=qa.max_tokens,
                seed=round_seed(qa.seed, k, attempt),
                on_progress=_progress_logger(log, f"question {k + 1}, attempt {attempt + 1}"),
                **constraints,
            )
            cleaned = [clean_question(result.text) for result in results]
            reasons = []
            for question, result in zip(cleaned, results, strict=True):
                reason = rejection_reason(question, qa.max_question_chars)
                if reason is None and result.finish_reason == "length" and "?" not in question:
                    reason = "cut_off"  # stopped by qa.max_tokens before the question was finished
                reasons.append(reason)
            open_ = [i for i, reason in enumerate(reasons) if reason is None]
            stats.gated += len(open_)
            gate_reasons = gates.reasons(
                [cleaned[i] for i in open_], [pending[i][0].passage for i in open_], [pending[i][0].url for i in open_]
            )
            for i, reason in zip(open_, gate_reasons, strict=True):
                reasons[i] = reason
            retry = []
            rejected = 0
            for (item, _, _), question, reason in zip(pending, cleaned, reasons, strict=True):
                if reason is None and normalize_question(question) in seen:
                    reason = "duplicate"  # of a question kept before, for this passage or another
                if reason is None:
                    questions[item.chunk_id].append(question)
                    seen.add(normalize_question(question))
                    stats.written += 1
                    continue
                stats.reject(reason, question, item.url, attempt)
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


def question_gates(
    qa: QaSettings, qa_chunks: pd.DataFrame, embedder: EmbedderResource, settings: Settings
) -> QuestionGates:
    """The gates of `qa.gates`; the round trip retrieves among every passage of `qa_chunks` (not only the sample
    that gets questions), embedded window by window with models.embedding through the embedding cache."""
    model = embedder.embedder(settings)
    cache = embedder.cache()

    def embed(texts: list[str]):
        return embed_with_cache(model, cache, texts)[0]

    template = TemplateGate(embed, qa.template_similarity) if "not_template" in qa.gates else None
    roundtrip = None
    if "roundtrip" in qa.gates:
        passages = [Passage(r.chunk_id, r.url, r.passage) for r in qa_chunks.itertuples(index=False)]
        roundtrip = RoundTrip(passages, embed, qa.roundtrip_k, windows=model.windows)
    return QuestionGates(qa.gates, template=template, roundtrip=roundtrip)


def _progress_logger(log: Callable[[str], None], label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        # about twenty lines a round: what `mebot run` shows as questions written and the time left
        if done == total or done % max(1, total // 20) == 0:
            log(f"{label}: {done}/{total}")

    return report


@dg.asset(
    group_name="qa",
    kinds={"llm", "parquet"},
    code_version="1",
    metadata=reads_settings(
        "qa.prompt",
        "qa.few_shot",
        "qa.constrained",
        "qa.gates",
        "qa.template_similarity",
        "qa.roundtrip_k",
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
        "models.embedding",
    ),
)
def synthetic_qa(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    embedder: EmbedderResource,
    qa_chunks: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Questions whose answer is a passage, written by the chat model with `qa.prompt` (and the `qa.few_shot`
    examples; one question by construction with `qa.constrained` on llama.cpp): up to `qa.questions_per_chunk`
    distinct ones per passage, cleaned and checked — empty, over-long and non-question outputs, and those failing
    a quality gate of `qa.gates` (names nothing of its passage, a generic template, does not find its own page
    among the passages in the top `qa.roundtrip_k`) are retried once with another seed, then dropped and counted,
    with examples — with provenance and a held-out split (`qa.split`: by_question, by_page, or none — leaky,
    for comparison only). Calls are cached: a re-run repeats none."""
    config = settings.for_asset(context)
    qa = config.qa
    client = chat_model.client(config)
    passages = sample_passages(qa_chunks, qa.max_passages, qa.seed)
    if len(passages) < len(qa_chunks):
        context.log.info(f"writing questions for {len(passages)} of {len(qa_chunks)} passages (qa.max_passages)")
    gates = question_gates(qa, qa_chunks, embedder, config) if qa.gates else NO_GATES
    started = time.monotonic()
    questions, stats = write_questions(client, passages, qa, log=context.log.info, gates=gates)
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
            "gates": dg.MetadataValue.json(list(gates.enabled)),
            "gated_outputs": dg.MetadataValue.int(stats.gated),
            "gate_rejections": dg.MetadataValue.json(
                {GATE_REASON[g]: int(stats.rejected[GATE_REASON[g]]) for g in gates.enabled}
            ),
            "rejected_examples": dg.MetadataValue.json(dict(sorted(stats.examples.items()))),
            "split_mode": dg.MetadataValue.text(qa.split),
            "seconds": dg.MetadataValue.float(round(seconds, 2)),
            "model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
            "qa_preview": dg.MetadataValue.md(markdown_preview(frame[["split", "question", "answer", "url"]], rows=8)),
        },
        version_of=["qa_id", "question", "answer", "split"],
    )
