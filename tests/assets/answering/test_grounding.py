import pytest

from mebot.assets.answering.grounding import answer_claims, check_grounding

CONTEXT = (
    "I paid 95 pounds for the eyepiece in March 2019. My sister Laura is a vet in Lancaster. "
    'I rode 1240 kilometres on the Coast to Coast. My favourite book is "The Dispossessed". '
    "The jacket was 30% off."
)


@pytest.mark.parametrize(
    "answer",
    [
        "I paid £95 for it.",
        "I paid 95 GBP for it.",
        "My sister Laura is a vet in Lancaster.",
        "I rode 1,240 km on the Coast to Coast.",
        "It was in March 2019.",
        "My favourite book is 'The Dispossessed'.",
        "It was 30 percent off.",
        "I love riding my bike.",
        "Tobias Renwick here: yes, I went.",
    ],
)
def test_an_answer_that_states_only_what_its_context_says_is_grounded(answer):
    grounding = check_grounding(answer, CONTEXT, known_names=("Tobias Renwick",))
    assert grounding.grounded, grounding.unsupported


@pytest.mark.parametrize(
    ("answer", "invented"),
    [
        ("I paid £150 for it.", "£150"),
        ("I paid £950 for it.", "£950"),
        ("I paid $95 for it.", "$95"),
        ("I rode 1,240 miles.", "1,240 miles"),
        ("My sister Laura is a vet in Leeds.", "Leeds"),
        ("It was in April 2019.", "April 2019"),
        ('My favourite book is "Dune".', "Dune"),
        ("I have been riding for 12 years.", "12"),
        ("It was 40% off.", "40%"),
    ],
)
def test_an_invented_figure_name_date_or_title_is_unsupported(answer, invented):
    grounding = check_grounding(answer, CONTEXT)
    assert not grounding.grounded
    assert invented in grounding.unsupported


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Laura is a vet.", []),  # a sentence's first word is capitalised whatever it is
        ("I met Laura and Sam in York.", ["Laura", "Sam", "York"]),
        ("Yes. I went in June.", ["June"]),
        ("It cost £12.50 and took 3 hours.", ["£12.50", "3 hours"]),
    ],
)
def test_claims_are_the_figures_dates_and_names_an_answer_states(answer, expected):
    assert answer_claims(answer) == expected


@pytest.mark.parametrize("answer", ["", "   ", "?!", "\x00\ufffd", "x" * 10_000, "$$ \\frac{1}{2} $$ 12 \\cdot 3"])
def test_any_text_is_checked_without_raising(answer):
    check_grounding(answer, CONTEXT)
