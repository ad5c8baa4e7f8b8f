"""Deterministic stand-ins for the two models, for the fast tier (`make check`): a chat client and an embedder
that load nothing, answer in microseconds and always give the same output for the same input.

They are real subclasses of the project's base classes, so everything around the model stays real: the call
cache, the budget, usage counters and `complete_batch` (ChatClient), window cutting, the vector cache and FAISS
(Embedder). Use them through their Dagster resources:

    resources = {..., "chat_model": FakeChatModelResource(cache_dir=...), "embedder": FakeEmbedderResource(...)}

What the fake chat model writes (`default_reply`), keyed on the default prompts of mebot.yaml:
- a judge prompt ("PROPOSED ANSWER:"): a score 0-10, the share of the reference's words the answer has, with
  logprobs that put 70% on that score and the rest on its neighbours (so the expected score is the score);
- a question-writing prompt ("### TEXT ###"): "What can you tell me about <w1> <w2>?", two words of the passage
  picked by the call's seed, never one of the questions the prompt lists as existing;
- a RAG prompt ("### Context ###"): the context sentence sharing most words with the question (grounded);
- anything else, e.g. a fine-tuned model asked without context: a fixed sentence naming the model, so a
  LoRA-adapted client answers differently from its base.
Tests that need other replies pass `responder=` to FakeChat, or subclass it.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mebot.resources.chat import ChatClient, ChatModelResource, ChatResult, TokenLogprob
from mebot.resources.embeddings import Embedder, EmbedderResource, boundary_rank
from mebot.resources.settings import ChatModelSettings, EmbeddingModelSettings, Settings

TOKEN = re.compile(r"\w+|[^\w\s]")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
STOPWORDS = frozenset(
    "a an and are as at be but by did do does for from had has have how i in is it its me my of on or our so that "
    "the their them they this to was we were what when where which who why will with you your about can tell".split()
)
Responder = Callable[[list[dict], dict, "FakeChat"], str]


def words(text: str) -> list[str]:
    """The content words of `text`, lower-cased, in order (stopwords and one-letter words left out)."""
    return [w for w in (m.lower() for m in WORD.findall(text)) if w not in STOPWORDS]


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


# ---------------------------------------------------------------------------------------------------- chat


def _section(text: str, start: str, end: str | None) -> str:
    at = text.find(start)
    if at < 0:
        return ""
    at += len(start)
    stop = text.find(end, at) if end else -1
    return text[at : stop if stop >= 0 else len(text)].strip()


def judge_reply(content: str) -> str:
    reference = set(words(_section(content, "ANSWER:", "PROPOSED ANSWER:").split("\n\n")[0]))
    proposed = set(words(_section(content, "PROPOSED ANSWER:", "\n\n")))
    if not reference:
        return "0"
    return str(round(10 * len(reference & proposed) / len(reference)))


def question_reply(content: str, seed: int | None) -> str:
    passage = _section(content, "### TEXT ###", "\n\nWrite") or content
    existing = {" ".join(words(line)) for line in _section(content, "already exist", None).splitlines()[1:]}
    vocabulary = list(dict.fromkeys(w for w in words(passage) if len(w) > 3)) or ["this"]
    start = _digest(seed or 0) % len(vocabulary)
    for offset in range(len(vocabulary)):
        first = vocabulary[(start + offset) % len(vocabulary)]
        second = vocabulary[(start + offset + 1) % len(vocabulary)]
        question = f"What can you tell me about {first} {second}?"
        if " ".join(words(question)) not in existing:
            return question
    return f"What else can you tell me about {vocabulary[start]}?"


def rag_reply(content: str) -> str:
    context = _section(content, "### Context ###", "### Question ###")
    question = set(words(_section(content, "Question:", "\n")))
    sentences = [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+|\n+", context)
        # not the persona line, nor a page's label (`From "<title>":`, assets/index/context.py): only page text
        if s.strip() and not s.strip().startswith("Your name is") and not re.fullmatch(r'From ".*":', s.strip())
    ]
    if not sentences:
        return "I am not programmed to answer that."
    return max(sentences, key=lambda s: (len(question & set(words(s))), -sentences.index(s)))


def default_reply(messages: list[dict], params: dict, client: FakeChat) -> str:
    content = str(messages[-1].get("content") or "")
    if "PROPOSED ANSWER:" in content:
        return judge_reply(content)
    if "### TEXT ###" in content:
        return question_reply(content, params.get("seed"))
    if "### Context ###" in content:
        return rag_reply(content)
    voice = "with my adapter" if client.lora_path else "without an adapter"
    return f"I am {client.chat.model}, answering {voice}: {' '.join(words(content)[:8])}."


class FakeChat(ChatClient):
    """A chat model that loads nothing: `responder(messages, params, client)` writes each reply (default_reply).

    Every uncached call is recorded in `calls` (messages and the normalised parameters). Token counts are
    `TOKEN` matches; a reply longer than max_tokens is cut with finish_reason "length"."""

    def __init__(
        self,
        chat: ChatModelSettings,
        *,
        lora_path: str | None = None,
        responder: Responder | None = None,
        **options: Any,
    ):
        self.provider = chat.provider  # type: ignore[misc] - serves whichever provider the settings name
        super().__init__(chat, **options)
        if lora_path and not Path(lora_path).is_file():
            raise FileNotFoundError(f"LoRA adapter {lora_path} does not exist")
        self.lora_path = str(lora_path) if lora_path else None
        adapter = f":lora={Path(lora_path).name}" if lora_path else ""
        self.identity = f"fake:{chat.provider}:{chat.model}{adapter}"
        self.context_window = chat.context_window or chat.n_ctx
        self.responder = responder or default_reply
        self.calls: list[tuple[list[dict], dict]] = []
        self._calls_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(TOKEN.findall(text))

    def _generate(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        with self._calls_lock:
            self.calls.append((messages, dict(params)))
        text = self.responder(messages, params, self)
        tokens = TOKEN.findall(text)
        finish = "stop"
        if len(tokens) > params["max_tokens"]:
            cut = list(TOKEN.finditer(text))[params["max_tokens"]].start()
            text, tokens, finish = text[:cut].rstrip(), tokens[: params["max_tokens"]], "length"
        prompt_tokens = sum(self.count_tokens(str(m.get("content") or "")) for m in messages)
        logprobs = fake_logprobs(tokens, params["top_logprobs"]) if params["logprobs"] else None
        return self._fresh(text, prompt_tokens, len(tokens), finish, logprobs)


def fake_logprobs(tokens: list[str], top: int) -> list[TokenLogprob]:
    """70% on each written token; a number's neighbours (else filler words) share the rest."""
    result = []
    for token in tokens:
        if token.isdigit():
            others = [str(int(token) + d) for d in (-1, 1, -2, 2, -3, 3) if 0 <= int(token) + d <= 10]
        else:
            others = ["the", "I", "a", "and", "of", "to"]
        others = [o for o in others if o != token][: max(0, top - 1)]
        share = 0.3 / len(others) if others else 0.0
        alternatives = [(token, math.log(0.7)), *((o, math.log(share)) for o in others)]
        result.append(TokenLogprob(token=token, logprob=math.log(0.7), top=alternatives[:top]))
    return result


class FakeChatModelResource(ChatModelResource):
    """ChatModelResource whose clients are FakeChat (with the real call cache, prices and budget, as
    ChatModelResource.client sets them up)."""

    def new_client(self, chat: ChatModelSettings, **options: Any) -> ChatClient:
        return FakeChat(chat, **options)


# ----------------------------------------------------------------------------------------------- embedder


class FakeEmbedder(Embedder):
    """Hashed bag of content words: texts sharing words get close vectors, so retrieval over a real FAISS index
    finds the chunk with the question's words. Tokens are `TOKEN` matches; reads at most `max_tokens`."""

    def __init__(self, config: EmbeddingModelSettings | None = None, dim: int = 256, max_tokens: int = 254):
        config = config or EmbeddingModelSettings()
        self.model_name = config.model
        self.dim = dim
        self.max_tokens = max_tokens
        self.window_tokens = min(config.window_tokens, max_tokens)
        self.batch_size = config.batch_size
        self.window_overlap_tokens = config.window_overlap_tokens
        self.identity = f"fake:{config.model}:{dim}"
        self.encoded = 0  # texts that reached the "model"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(TOKEN.findall(text)) for text in texts]

    def _token_layout(self, text: str) -> tuple[list[int], list[int]]:
        starts = [match.start() for match in TOKEN.finditer(text)]
        return starts, [boundary_rank(text, start, False) for start in starts]

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in words(text) or ["<empty>"]:
                vectors[row, _digest(word) % self.dim] += 1.0
        return vectors


class FakeEmbedderResource(EmbedderResource):
    """EmbedderResource whose embedder is a FakeEmbedder (with the real vector cache in cache_dir)."""

    def embedder(self, settings: Settings) -> Embedder:
        return FakeEmbedder(settings.models.embedding)


def fake_model_resources(cache_dir: str | Path) -> dict[str, Any]:
    """The two model resources of the graph, faked, with their caches under `cache_dir`."""
    return {
        "chat_model": FakeChatModelResource(cache_dir=str(cache_dir)),
        "embedder": FakeEmbedderResource(cache_dir=str(cache_dir)),
    }


def with_fake_models(resources: Mapping[str, Any]) -> dict[str, Any]:
    """`resources` (e.g. `build_definitions(...).resources`) with the chat model and the embedder faked, each
    keeping the cache folder it had."""
    faked = dict(resources)
    if "chat_model" in faked:
        real = faked["chat_model"]
        faked["chat_model"] = FakeChatModelResource(cache_dir=real.cache_dir, cache_url=real.cache_url)
    if "embedder" in faked:
        faked["embedder"] = FakeEmbedderResource(cache_dir=faked["embedder"].cache_dir)
    return faked
