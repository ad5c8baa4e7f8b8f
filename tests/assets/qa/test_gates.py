"""The quality gates on written questions (assets/qa/gates.py): names its passage, not a generic template,
round-trips to its own page; each on crafted questions, with a deterministic bag-of-words embedder, and the
template threshold against the real MiniLM (full tier)."""

import numpy as np
import pytest

from mebot.assets.qa.gates import (
    GATE_REASON,
    GENERIC_TEMPLATES,
    Passage,
    QuestionGates,
    RoundTrip,
    TemplateGate,
    content_terms,
    names_passage,
    shared_terms,
    stem,
)
from mebot.resources.settings import QaSettings
from tests.fakes import FakeEmbedder

BREAD = (
    "My sourdough starter is called Brenda. I feed her every morning with rye flour and she has lived in my kitchen "
    "since 2019, surviving two house moves and one very long holiday in Portugal."
)
SENSOR = (
    "I bought a cloud sensor for the observatory shed for 120 pounds. It measures the sky temperature, so the "
    "roll-off roof closes by itself when clouds arrive and the telescope stays dry."
)
RIDE = (
    "Last summer I cycled from Sheffield to Edinburgh over four days, about 400 kilometres, mostly on quiet lanes "
    "and the occasional canal towpath, with a flapjack in every jersey pocket."
)


def fake_embed():
    embedder = FakeEmbedder()
    return embedder, embedder.embed


# ------------------------------------------------------------------------------------------- names_passage


@pytest.mark.parametrize(
    "question",
    [
        "What is your sourdough starter called?",
        "Who is Brenda?",
        "How often do you feed your starters?",  # plural of a passage word
        "When did you move to Portugal?",
        "What happened in 2019?",  # a number names it too
        "What flour do you use?",
    ],
)
def test_a_question_naming_something_of_its_passage_passes(question):
    assert names_passage(question, BREAD), content_terms(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is the text above?",
        "What is the question?",
        "I'm ready to help. What can I do to assist you?",
        "What is the main idea of this passage?",
        "What did the author write about?",
        "Can you tell me more about it?",
        "How does the text answer the question?",
        "What is the best way to prepare for a marathon?",  # content words, but none of this passage
        "",
    ],
)
def test_a_question_naming_nothing_of_its_passage_fails(question):
    assert not names_passage(question, BREAD)
    assert shared_terms(question, BREAD) == set()


def test_words_too_common_to_name_anything_do_not_count():
    passage = "The most interesting thing I have done this year was to find a good way to bake rye bread."
    assert not names_passage("What was the most interesting thing you've done?", passage)
    assert not names_passage("What is the best way to find a good year?", passage)
    assert names_passage("What bread did you bake?", passage)


def test_content_terms_leave_out_stopwords_and_words_about_the_material():
    assert content_terms("What is the text above about, in your own words?") == set()
    assert content_terms("Why did you cycle 400 km?") == {stem("cycle"), "400"}  # 2-letter words say little
    assert stem("cycled") == stem("cycling") == stem("cycle") and stem("starters") == stem("starter")


# -------------------------------------------------------------------------------------------- not_template


def test_template_gate_rejects_the_templates_and_close_paraphrases_but_not_real_questions():
    _, embed = fake_embed()
    gate = TemplateGate(embed, threshold=0.8)
    generic = gate.generic(
        ["What is the question?", "what is the TEXT above", "What is your sourdough starter called?"]
    )
    assert generic == [True, True, False]
    similarity = gate.similarities(["What is the main topic of the passage?", "Who is Brenda?"])
    assert similarity[0] > 0.99 and similarity[1] < 0.5  # the fake embedder: bags of content words


@pytest.mark.full
def test_template_threshold_separates_generic_from_specific_questions_with_minilm(minilm):
    """The default qa.template_similarity with the real embedding model: paraphrases of the templates are
    caught, questions about something in particular are not."""
    gate = TemplateGate(minilm.embed, QaSettings().template_similarity)
    paraphrases = ["What is this text about?", "What is the main idea of the passage above?", "How can I help you?"]
    specific = [
        "What is your sourdough starter called?",
        "How much did the cloud sensor for your observatory cost?",
        "How far did you cycle from Sheffield to Edinburgh?",
        "What did you learn from rereading Designing Data-Intensive Applications?",
    ]
    assert gate.generic(paraphrases) == [True] * len(paraphrases), gate.similarities(paraphrases)
    assert gate.generic(specific) == [False] * len(specific), gate.similarities(specific)


# ---------------------------------------------------------------------------------------------- roundtrip


PASSAGES = [
    Passage("c1", "/bread", BREAD),
    Passage("c2", "/sensor", SENSOR),
    Passage("c3", "/ride", RIDE),
    Passage("c4", "/bread", "Rye loaves need a long cold proof overnight in the fridge."),
]


def test_roundtrip_ranks_the_questions_page_and_cuts_at_k():
    embedder, embed = fake_embed()
    roundtrip = RoundTrip(PASSAGES, embed, k=1, windows=embedder.windows)
    questions = ["Why does your observatory roof close when clouds arrive?", "What is the capital of France?"]
    assert roundtrip.page_ranks(questions, ["/sensor", "/ride"]) == [1, None]
    assert roundtrip.ranked_urls(["How long do you proof rye loaves?"]) == [["/bread"]]
    wide = RoundTrip(PASSAGES, embed, k=4, windows=embedder.windows)
    [rank] = wide.page_ranks(["Why does your observatory roof close when clouds arrive?"], ["/bread"])
    assert rank is not None and 1 < rank <= 4  # /bread is in the top 4 of 4 passages, behind /sensor


def test_roundtrip_scores_a_passage_by_its_best_window():
    """A long passage cut into windows is found by a question about its last window."""
    long_passage = " ".join(["Filler sentence number one about nothing much."] * 40) + " The kettle is green."
    embedder = FakeEmbedder(max_tokens=32)
    passages = [Passage("a", "/long", long_passage), Passage("b", "/other", "Kettles, teapots and cups of tea.")]
    roundtrip = RoundTrip(passages, embedder.embed, k=1, windows=embedder.windows)
    assert len(embedder.windows(long_passage)) > 3
    assert roundtrip.ranked_urls(["Is your kettle green?"]) == [["/long"]]


# ---------------------------------------------------------------------------------------------- all gates


def test_gates_report_the_first_gate_each_question_fails():
    embedder, embed = fake_embed()
    gates = QuestionGates(
        ["names_passage", "not_template", "roundtrip"],
        template=TemplateGate(embed, 0.8, templates=[*GENERIC_TEMPLATES, "What do you feed Brenda with?"]),
        roundtrip=RoundTrip(PASSAGES, embed, k=1, windows=embedder.windows),
    )
    questions = [
        "What is the text above?",  # names nothing
        "What do you feed Brenda with?",  # a template (added above)
        # names the bread passage (sourdough), but is about the ride: retrieval finds /ride first
        "Did you eat sourdough on the canal towpath from Sheffield to Edinburgh in your jersey pocket?",
        "What is your sourdough starter called?",
    ]
    reasons = gates.reasons(questions, [BREAD] * 4, ["/bread"] * 4)
    assert reasons == [
        GATE_REASON["names_passage"],
        GATE_REASON["not_template"],
        GATE_REASON["roundtrip"],
        None,
    ]
    only_names = QuestionGates(["names_passage"])
    assert only_names.reasons(questions, [BREAD] * 4, ["/bread"] * 4) == ["no_passage_term", None, None, None]


def test_gates_need_their_parts_and_known_names():
    with pytest.raises(ValueError, match="TemplateGate"):
        QuestionGates(["not_template"])
    with pytest.raises(ValueError, match="RoundTrip"):
        QuestionGates(["roundtrip"])
    with pytest.raises(ValueError, match="unknown question gates"):
        QuestionGates(["speling"])
    with pytest.raises(ValueError, match="at least one passage"):
        RoundTrip([], lambda texts: np.zeros((len(texts), 4)), k=1)
