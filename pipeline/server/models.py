"""The models the bot answers with, by name: `rag`, `extractive` (quotes, no LLM), and `ft-<key>` for every
fine-tuned LoRA adapter on disk.

One small registry that the server and the evaluation share, so both answer a question the same way:

    registry = ModelRegistry(settings, resources, data_dir)    # resources: build_definitions(...).resources
    registry.names()                       # ['rag', 'extractive', 'ft-e1-b2-lr0.5', ...]
    registry.answer("rag", "What is your sourdough starter called?")   # -> Reply(text, sources, ...)

The RAG bot is loaded by `mebot.assets.index.rag.load_rag_bot` (latest chunks and CURRENT index version); a
fine-tuned model is `<data_dir>/models/<key>/adapter.gguf` run on the base chat model through llama.cpp and asked
in its training format (`mebot.assets.finetune.formats.ask_finetuned`). `refresh()` picks up a newer materialization: it
reloads the RAG bot when the index's CURRENT version or the chunks file changed, and rescans the adapters;
the new bot replaces the old one in one assignment, so a question in flight finishes on the bot it started with.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mebot.assets.finetune.formats import ask_finetuned
from mebot.assets.index.extractive import EXTRACTIVE_MODEL, ExtractiveBot
from mebot.assets.index.rag import RagBot, Source, load_rag_bot
from mebot.resources.chat import ChatClient
from mebot.resources.layout import ADAPTER_FILE, DataLayout
from mebot.resources.settings import Settings

log = logging.getLogger(__name__)

RAG_MODEL = "rag"
FT_PREFIX = "ft-"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UnknownModelError(ValueError):
    """A model name that is not served; the message names the valid ones."""


class NotReadyError(RuntimeError):
    """Nothing has been materialized yet (no chunks or no index)."""


@dataclass
class Reply:
    """One answer from any model: the text, the chunks it was based on (none for fine-tuned models)."""

    model: str
    text: str
    sources: list[Source] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    latency_s: float = 0.0


def adapter_models(data_dir: Path) -> dict[str, Path]:
    """`ft-<key>` -> adapter for every `<data_dir>/models/<key>/adapter.gguf`, sorted by key."""
    root = DataLayout(Path(data_dir)).models_dir
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(root.iterdir()):
        adapter = folder / ADAPTER_FILE
        if folder.is_dir() and _KEY_PATTERN.match(folder.name) and adapter.is_file():
            found[FT_PREFIX + folder.name] = adapter
    return found


def materialization_signature(data_dir: Path, index_dir: Path) -> tuple:
    """What changes when the chunks or the index are re-materialized: CURRENT's content and the chunks' stat."""
    try:
        current = (Path(index_dir) / "CURRENT").read_text(encoding="utf-8").strip()
    except OSError:
        current = None
    try:
        stat = DataLayout(Path(data_dir)).asset("rag_chunks").stat()
        chunks = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        chunks = None
    return current, chunks


class ModelRegistry:
    """The served models; thread-safe. `refresh()` is cheap when nothing changed (two stat calls and a listing)."""

    def __init__(self, settings: Settings, resources: dict, data_dir: Path):
        self.settings = settings
        self.resources = resources
        self.data_dir = Path(data_dir)
        self.index_dir = Path(resources["index_store"].index_dir)
        self._lock = threading.Lock()
        self._bot: RagBot | None = None
        self._signature: tuple | None = None
        self._adapters: dict[str, Path] = {}
        self._ft_clients: dict[str, ChatClient] = {}
        self.not_ready_reason = "not loaded yet"
        self.loaded_at: float | None = None
        self.reloads = 0

    # ------------------------------------------------------------------------------------------ loading

    def refresh(self) -> bool:
        """Load the RAG bot if the materialization changed since the last load (or none is loaded); rescan the
        fine-tuned adapters. Returns True when a new bot was swapped in. A failed load keeps the old bot."""
        self._adapters = adapter_models(self.data_dir)
        signature = materialization_signature(self.data_dir, self.index_dir)
        if signature == self._signature and self._bot is not None:
            return False
        if signature == (None, None):  # nothing materialized yet: nothing to try
            self.not_ready_reason = "no index yet: run `make run` first"
            return False
        with self._lock:  # one loader at a time
            if signature == self._signature and self._bot is not None:
                return False
            try:
                bot = load_rag_bot(self.settings, self.resources, self.data_dir)
            except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
                self._signature = signature
                if self._bot is None:
                    self.not_ready_reason = _public_reason(exc)
                log.warning("mebot serve: could not load the RAG bot: %s", exc)
                return False
            self._bot = bot  # the swap: one reference assignment
            self._signature = signature
            self.not_ready_reason = ""
            self.loaded_at = time.time()
            self.reloads += 1
            log.info("mebot serve: loaded index %s (%d chunks)", bot.index.path.name, len(bot.chunks))
            return True

    @property
    def bot(self) -> RagBot:
        bot = self._bot
        if bot is None:
            raise NotReadyError(self.not_ready_reason or "no index yet: run `make run` first")
        return bot

    @property
    def ready(self) -> bool:
        return self._bot is not None

    def index_version(self) -> str | None:
        bot = self._bot
        return bot.index.path.name if bot is not None else None

    # ------------------------------------------------------------------------------------------- models

    def names(self) -> list[str]:
        """`rag`, `extractive` (the best sentences quoted, no LLM) and the fine-tuned adapters."""
        return [RAG_MODEL, EXTRACTIVE_MODEL, *self._adapters]

    def check(self, model: str) -> str:
        if model not in self.names():
            raise UnknownModelError(f"unknown model {model!r}; the valid models are: {', '.join(self.names())}")
        return model

    def finetuned_client(self, model: str) -> ChatClient:
        adapter = self._adapters[model]
        with self._lock:
            client = self._ft_clients.get(model)
            if client is None or client.lora_path != str(adapter.resolve()):
                client = self.resources["chat_model"].client(self.settings, lora_path=str(adapter))
                self._ft_clients[model] = client
        return client

    # ---------------------------------------------------------------------------------------- answering

    def retrieve(self, question: str, k: int | None = None) -> list[Source]:
        return self.bot.retrieve(question, k)

    def answer(self, model: str, question: str, on_token: Callable[[str], None] | None = None) -> Reply:
        """The answer of `model` to `question` (raises UnknownModelError, NotReadyError, QuestionError, ...);
        `on_token` gets the answer's pieces as the model generates them (the server streams them)."""
        self.check(model)
        if model in (RAG_MODEL, EXTRACTIVE_MODEL):
            bot = self.bot if model == RAG_MODEL else ExtractiveBot(self.bot)
            rag = bot.ask(question, on_token=on_token)
            return Reply(
                model=model,
                text=rag.answer,
                sources=rag.sources,
                prompt_tokens=rag.prompt_tokens,
                completion_tokens=rag.completion_tokens,
                cached=rag.cached,
                latency_s=rag.latency_s,
            )
        started = time.monotonic()
        text, result = ask_finetuned(self.finetuned_client(model), self.settings, question, on_token=on_token)
        return Reply(
            model=model,
            text=text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached=result.cached,
            latency_s=round(time.monotonic() - started, 3),
        )


def _public_reason(exc: Exception) -> str:
    """Why the bot is not ready, without file paths (the server log has the full message)."""
    from mebot.resources.vector_index import IndexMismatchError

    if isinstance(exc, IndexMismatchError):
        return "the index was built with another embedding model: re-materialize vector_index (`make run`)"
    if isinstance(exc, FileNotFoundError):
        return "no index yet: run `make run` first"
    return "the index could not be loaded (see the server log); run `make run` again"


__all__ = [
    "EXTRACTIVE_MODEL",
    "FT_PREFIX",
    "RAG_MODEL",
    "ModelRegistry",
    "NotReadyError",
    "Reply",
    "UnknownModelError",
    "adapter_models",
    "materialization_signature",
]
