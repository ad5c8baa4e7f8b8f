import pytest

from mebot.assets.owner.visitor import answer_flags

SOURCE = "I paid 95 pounds for the eyepiece in March 2019. My sister Laura is a vet in Lancaster."


@pytest.mark.parametrize(
    ("answer", "grounded"),
    [
        ("I paid £95 for it.", True),
        ("My sister Laura is a vet in Lancaster.", True),
        ("It was a lovely thing to own.", True),  # states nothing checkable
        ("I paid £150 for it.", False),  # an invented price
        ("My sister Laura is a vet in Leeds.", False),  # an invented place
        ("I'm not programmed to answer that.", True),  # a decline claims nothing
    ],
)
def test_an_answer_is_grounded_when_its_figures_and_names_are_in_its_sources(answer, grounded):
    assert answer_flags("How much was the eyepiece?", answer, [SOURCE]).grounded is grounded


def test_an_answer_without_sources_cannot_be_checked_and_has_weak_evidence():
    flags = answer_flags("How much was the eyepiece?", "It cost £95.", [])
    assert flags.grounded is None and flags.weak_evidence


@pytest.mark.parametrize(
    ("question", "weak"), [("How much was the eyepiece?", False), ("What is your favourite opera?", True)]
)
def test_evidence_is_weak_when_the_best_source_shares_few_of_the_questions_words(question, weak):
    assert answer_flags(question, "An answer.", [SOURCE]).weak_evidence is weak


def test_a_decline_is_flagged():
    assert answer_flags("Where do you live?", "I don't know.", [SOURCE]).declined
