"""What the visitor log says about an answer, computed without a model: declined (the golden scorer's refusal
test), grounded (every figure, date, name and title it states is in the pages it was based on: the grounding check
of assets/answering) and weak evidence (few of the question's content words are in the best page retrieved).
Cheap enough to compute on every answer served."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from mebot.assets.answering.grounding import check_grounding
from mebot.assets.evaluation.golden_match import is_refusal
from mebot.assets.outputs import content_output
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.visitor_log import VisitorLogResource

WEAK_EVIDENCE_SHARE = 0.34  # of the question's content words found in the best source
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be but by did do does for from had has have how i in is it its me my of on or so that the "
    "their them there they this to was were what when where which who why will with would you your yours".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in (m.group(0).casefold() for m in _WORD.finditer(text or "")) if w not in STOPWORDS}


@dataclass(frozen=True)
class AnswerFlags:
    declined: bool
    grounded: bool | None  # None: an answer with no sources (a fine-tuned model's) cannot be checked
    weak_evidence: bool


def answer_flags(question: str, answer: str, source_texts: Sequence[str]) -> AnswerFlags:
    """The flags of one answer given the texts of its sources, best first."""
    declined = is_refusal(answer)
    if not source_texts:
        return AnswerFlags(declined, None, True)
    grounded = declined or check_grounding(answer, " ".join(source_texts)).grounded
    asked = content_words(question)
    weak = bool(asked) and len(asked & content_words(source_texts[0])) / len(asked) < WEAK_EVIDENCE_SHARE
    return AnswerFlags(declined, grounded, weak)


# ------------------------------------------------------------------------------------------ visitor_questions

VISITOR_PARTITIONS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)  # today included
PREVIEW_QUESTIONS = 50


def day_metadata(day: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    """A day of the log in figures: questions, decline rate, thumbs-down rate (of those rated), the questions."""
    n = len(day)
    rated = day["rating"].notna() if n else pd.Series(dtype=bool)
    down = int((day["rating"] == "down").sum()) if n else 0
    metadata = {
        "questions": dg.MetadataValue.int(n),
        "declined": dg.MetadataValue.int(int(day["declined"].sum()) if n else 0),
        "thumbs_up": dg.MetadataValue.int(int((day["rating"] == "up").sum()) if n else 0),
        "thumbs_down": dg.MetadataValue.int(down),
    }
    if n:
        metadata["decline_rate"] = dg.MetadataValue.float(round(float(day["declined"].mean()), 4))
    if n and rated.any():
        metadata["thumbs_down_rate"] = dg.MetadataValue.float(round(down / int(rated.sum()), 4))
    shown = day[["asked_at", "model", "question", "declined", "rating"]].tail(PREVIEW_QUESTIONS)
    metadata["questions_table"] = dg.MetadataValue.md(markdown_preview(shown, rows=PREVIEW_QUESTIONS) if n else "none")
    return metadata


@dg.asset(
    name="visitor_questions",
    group_name="visitors",
    kinds={"sqlite", "parquet"},
    code_version="1",
    partitions_def=VISITOR_PARTITIONS,
)
def visitor_questions(context: dg.AssetExecutionContext, visitor_log: VisitorLogResource) -> dg.Output[pd.DataFrame]:
    """One day (UTC) of the visitor log: every question answered, its model, answer, sources, flags and the
    visitor's feedback (no address: the log keeps none). Metadata: counts, decline rate, thumbs-down rate and the
    day's questions as a table."""
    day = visitor_log.log().read(day=context.partition_key)
    context.log.info(f"{context.partition_key}: {len(day)} questions")
    return content_output(day, day_metadata(day), version_of=["id", "rating", "comment"])
