"""The `qa` section of the settings: how synthetic questions are written (the prompt, its few-shot examples, the
grammar), the quality gates they must pass, and the train/validation/test split. Re-exported by
mebot.resources.settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mebot.resources.settings_base import _Section, distinct, valid_patterns

# With the write-up's instruction before the text (ORIGINAL_QA_PROMPT) a small model mostly continues the passage
# instead of asking, so the default puts it after the text; asking for "a name, place, number or thing the TEXT
# mentions" (with the few-shot examples below and the question grammar) keeps more questions past the gates.
DEFAULT_QA_PROMPT = (
    '### TEXT ###\n{passage}\n\nWrite one short question, addressed to the author as "you", that the TEXT above '
    "answers. Ask about a name, place, number or thing the TEXT mentions. Reply with the question only."
)
# The reproduced write-up's prompt: `qa.prompt: original` selects it.
ORIGINAL_QA_PROMPT = (
    "Write a concise question in as few words as possible to the author in the second person that has the "
    "following TEXT as the answer.\n\n### TEXT ###\n{passage}"
)
QA_PROMPT_PRESETS = {"original": ORIGINAL_QA_PROMPT}


def resolve_qa_prompt(prompt: str) -> str:
    """qa.prompt as a template: a preset's text ("original"), or the template itself."""
    return QA_PROMPT_PRESETS.get(prompt.strip(), prompt)


class FewShotExample(_Section):
    passage: str = Field(min_length=1, description="An example passage.")
    question: str = Field(min_length=1, description="The question written for it.")


# Shown to the question writer as earlier turns of the conversation (about someone else than the site's person,
# so no example question leaks into the site's questions): each asks about something the passage names.
DEFAULT_QA_FEW_SHOT = [
    FewShotExample(
        passage="I have kept bees at the bottom of the garden since 2016: two hives of Buckfast bees. The stronger "
        "colony gave 22 kg of honey last August, most of it from the lime trees along the canal.",
        question="How much honey did your stronger hive give last August?",
    ),
    FewShotExample(
        passage="After nine years of teaching physics at a secondary school in Leeds, I moved into software in "
        "2019, starting as a junior developer at a small firm that builds booking systems for dentists.",
        question="What did you teach before you moved into software?",
    ),
    FewShotExample(
        passage="My favourite walk is the ridge from Cat Bells to Dale Head: about eight miles on good paths, with "
        "Derwentwater below you for the first hour and hardly anyone about after Maiden Moor.",
        question="Which ridge walk is your favourite?",
    ),
]


class QaSettings(_Section):
    chunk_tokens: int = Field(250, ge=20, le=4000, description="Passage chunk size in cl100k_base tokens.")
    overlap_tokens: int = Field(0, ge=0, description="Tokens shared by neighbouring passage chunks.")
    min_tokens: int = Field(20, ge=0, description="Chunks shorter than this (in tokens) are not worth a question.")
    drop_patterns: list[str] = Field(
        default_factory=lambda: [r"(?im)^\s*related (posts|articles)\b", r"(?im)^\s*(leave a comment|share this)\b"],
        description="Regexes: a chunk matching any of them is boilerplate and gets no question.",
    )
    passage: Literal["chunk", "longest_paragraph"] = Field(
        "chunk", description="The answer passage: the whole chunk, or its longest paragraph."
    )
    prompt: str = Field(
        DEFAULT_QA_PROMPT,
        description="Question-writing prompt; {passage} is the answer passage. The preset `original`: the "
        "instruction before the text, as the reproduced write-up asked.",
    )
    few_shot: list[FewShotExample] = Field(
        default_factory=lambda: list(DEFAULT_QA_FEW_SHOT),
        description="Example passages with their question, shown as earlier turns (the prompt filled with each "
        "passage, answered by its question); [] asks without examples.",
    )
    constrained: bool = Field(
        True,
        description="llama_cpp: a grammar makes the output one question (starts like one, ends at its '?'); "
        "an OpenAI-compatible server gets the prompt alone.",
    )
    gates: list[Literal["names_passage", "not_template", "roundtrip"]] = Field(
        default_factory=lambda: ["names_passage", "not_template", "roundtrip"],
        description="Quality gates a question must pass (assets/qa/gates.py); a failed one is retried once with "
        "another seed, then dropped and counted. []: keep any question.",
    )
    template_similarity: float = Field(
        0.7,
        gt=0,
        le=1,
        description="not_template: a question whose embedding is this close (cosine) to a generic template "
        "('What is the text above?') is rejected.",
    )
    roundtrip_k: int = Field(
        4,
        ge=1,
        le=100,
        description="roundtrip: retrieving with the question among all qa_chunks passages must put a passage of its "
        "own page in the top k.",
    )
    max_passages: int = Field(
        16,
        ge=0,
        description="Write questions for at most this many passages (a seeded sample spread over the pages; 0: "
        "all). The default keeps `make run` within minutes on a laptop's CPU; use 0 for a real bot.",
    )
    questions_per_chunk: int = Field(2, ge=1, le=10, description="Distinct questions written per passage.")
    max_question_chars: int = Field(300, ge=20, le=5000, description="Longer questions are rejected.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the question writer.")
    max_tokens: int = Field(48, ge=4, le=512, description="Longest question, in tokens.")
    split: Literal["by_question", "by_page", "none"] = Field(
        "by_question",
        description="by_question: one question per passage trains, another is held out; by_page: whole pages held "
        "out; none: tested on its own training questions (leaky, for comparison only).",
    )
    train_fraction: float = Field(0.8, gt=0, le=1, description="Share of questions (or pages) that train.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share held out for validation loss.")
    seed: int = Field(42, description="Seeds the passage sample, the question writer and the split.")

    @field_validator("drop_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return valid_patterns(patterns)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_passage(cls, prompt: str) -> str:
        if "{passage}" not in resolve_qa_prompt(prompt):
            raise ValueError(
                f"the question-writing prompt must contain {{passage}} or be a preset ({', '.join(QA_PROMPT_PRESETS)})"
            )
        return prompt

    @field_validator("gates")
    @classmethod
    def _gates_do_not_repeat(cls, gates: list[str]) -> list[str]:
        return distinct(gates, "gates")

    @model_validator(mode="after")
    def _fractions_fit(self) -> QaSettings:
        if self.train_fraction + self.validation_fraction > 1:
            raise ValueError(
                f"train_fraction + validation_fraction = {self.train_fraction + self.validation_fraction} exceeds 1"
            )
        return self
