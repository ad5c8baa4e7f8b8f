"""The models the bot answers with, by name: `rag`, `extractive` (quotes, no LLM), `ft-<key>` for every fine-tuned
model of the sweep, and `finetune`, the best of those by `serve.finetune_metric` on the leaderboard.

`ModelRegistry` is shared by the server and anything else that needs the same answers; `refresh()` picks up a
newer release or fine-tune and swaps the bot in one assignment, so a question in flight finishes on its own bot."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mebot.assets.evaluation.answers import finetuned_chat_settings
from mebot.assets.finetune.formats import ask_finetuned
from mebot.assets.index.extractive import EXTRACTIVE_MODEL, ExtractiveBot
from mebot.assets.index.rag import RagBot, Source
from mebot.pipeline.server.release import load_served_bot, release_signature
from mebot.resources.chat import ChatClient
from mebot.resources.layout import ADAPTER_FILE, DataLayout
from mebot.resources.releases import current_release
from mebot.resources.settings import Settings

log = logging.getLogger(__name__)

RAG_MODEL = "rag"
FT_PREFIX = "ft-"
BEST_MODEL = "best"  # serve.default_model's default: the best served model by serve.default_metric
BEST_FINETUNE = "finetune"  # the reproduced write-up's API name: the best fine-tuned model (serve.finetune_metric)
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


def _finetuned_partition_files(data_dir: Path) -> list[Path]:
    partitions = DataLayout(Path(data_dir)).partitions_dir("finetuned_models")
    return sorted(partitions.glob("*.parquet")) if partitions.is_dir() else []


def models_signature(data_dir: Path) -> tuple:
    """What changes when a fine-tuned model or the leaderboard is (re)written: the files' names, sizes and times
    (stat calls only, so `refresh()` reads Parquet only after a change)."""
    layout = DataLayout(Path(data_dir))
    files = [*_finetuned_partition_files(data_dir), *adapter_models(data_dir).values(), layout.asset("leaderboard")]
    stats = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        stats.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stats)


def finetuned_models_rows(data_dir: Path) -> dict[str, pd.Series]:
    """`ft-<key>` -> the `finetuned_models` row of every sweep point that can answer: a local adapter on disk
    (`<data_dir>/models/<key>/adapter.gguf`, wherever the data folder has moved), or an OpenAI fine-tune's model id
    (from its materialized partition)."""
    found: dict[str, pd.Series] = {}
    for path in _finetuned_partition_files(data_dir):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # a half-written or foreign file: serve the others
            log.warning("mebot serve: skipped %s: %s", path.name, exc)
            continue
        if not frame.empty and frame.iloc[0].get("backend") == "openai" and frame.iloc[0].get("model_id"):
            found[FT_PREFIX + path.stem] = frame.iloc[0]
    for name, adapter in adapter_models(data_dir).items():
        found[name] = pd.Series(
            {"partition_key": name[len(FT_PREFIX) :], "backend": "local_lora", "adapter_path": str(adapter)}
        )
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class ModelChoice:
    """Which served model an alias (`finetune`) or the served default (serve.default_model) names, and why (shown
    by /v1/models)."""

    model: str
    reason: str


TIE_BREAK_METRIC = "rougeL_f1"  # the reproduced write-up's metric, when the chosen metric ties (e.g. all 0)


def board_key(model: str) -> str:
    """The leaderboard's (and a release's) name for a served model: `ft-<key>` -> `<key>`."""
    return model[len(FT_PREFIX) :] if model.startswith(FT_PREFIX) else model


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _board_values(board: pd.DataFrame | None, metric: str) -> dict[str, float]:
    if board is None or "model" not in board.columns or metric not in board.columns:
        return {}
    values = {str(model): _finite(value) for model, value in zip(board["model"], board[metric], strict=True)}
    return {model: value for model, value in values.items() if value is not None}


def measured_figures(
    candidates: list[str], metric: str, board: pd.DataFrame | None, release_golden: dict[str, dict] | None
) -> dict[str, tuple[float, str]]:
    """served model -> (its `metric`, where from): the served release's golden figures where they record it (they
    were measured with what is served), else the leaderboard's; unmeasured models are left out."""
    on_board = _board_values(board, metric)
    found = {}
    for model in candidates:
        released = _finite((release_golden or {}).get(board_key(model), {}).get(metric))
        if released is not None:
            found[model] = (released, "release")
        elif board_key(model) in on_board:
            found[model] = (on_board[board_key(model)], "leaderboard")
    return found


def _why_unmeasured(board: pd.DataFrame | None, metric: str, what: str, has_release: bool) -> str:
    if board is None and not has_release:
        return "no leaderboard yet"
    if (board is None or metric not in board.columns) and not has_release:
        return f"the leaderboard has no {metric} yet"
    return f"no {what} has a {metric} yet"


def best_model(
    candidates: list[str],
    metric: str,
    board: pd.DataFrame | None = None,
    release_golden: dict[str, dict] | None = None,
    *,
    release_id: str | None = None,
    what: str = "served model",
) -> ModelChoice | None:
    """The candidate with the highest `metric` (the served release's golden figures first, else the leaderboard);
    ties: the higher ROUGE-L F1 on the leaderboard, then the candidates' order. While none is measured: the first
    candidate, saying why (no leaderboard yet, or no such figure). None when there is no candidate."""
    if not candidates:
        return None
    measured = measured_figures(candidates, metric, board, release_golden)
    if not measured:
        return ModelChoice(
            candidates[0],
            f"{_why_unmeasured(board, metric, what, bool(release_golden))}: {candidates[0]}, the first served",
        )
    tie_values = _board_values(board, TIE_BREAK_METRIC)
    order = {model: position for position, model in enumerate(candidates)}

    def rank(model: str) -> tuple[float, float, int]:
        return -measured[model][0], -tie_values.get(board_key(model), -math.inf), order[model]

    top = min(measured, key=rank)
    value, source = measured[top]
    tied = sum(1 for figure, _ in measured.values() if figure == value)
    tie_note = f"; {tied} tied, the higher {TIE_BREAK_METRIC} first, then the first served" if tied > 1 else ""
    where = f"the served release {release_id}'s golden figures" if source == "release" else "the leaderboard"
    return ModelChoice(
        top,
        f"the highest {metric} in {where} ({value:.3f}; {len(measured)} of {len(candidates)} {what}s measured"
        f"{tie_note})",
    )


def resolve_default(
    setting: str, candidates: list[str], best: ModelChoice, best_finetune: ModelChoice | None
) -> ModelChoice:
    """What serve.default_model names: `best` -> `best` (the best of the served models by serve.default_metric),
    `finetune` -> the best fine-tuned model, a served model's name -> itself; a model that is not served (yet)
    falls back to `best`, saying so."""
    if setting == BEST_MODEL:
        return best
    if setting == BEST_FINETUNE and best_finetune is not None:
        return ModelChoice(best_finetune.model, f"serve.default_model is finetune: {best_finetune.reason}")
    if setting in candidates:
        return ModelChoice(setting, "serve.default_model names it")
    return ModelChoice(best.model, f"serve.default_model names {setting}, which is not served; instead {best.reason}")


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
    """The served models; thread-safe. `refresh()` is cheap when nothing changed (stat calls and two listings)."""

    def __init__(self, settings: Settings, resources: dict, data_dir: Path):
        self.settings = settings
        self.resources = resources
        self.data_dir = Path(data_dir)
        self.index_dir = Path(resources["index_store"].index_dir)
        self._lock = threading.Lock()
        self._bot: RagBot | None = None
        self._signature: tuple | None = None
        self._finetuned: dict[str, pd.Series] = {}
        self._best: ModelChoice | None = None
        self._default = self._best_served = ModelChoice(RAG_MODEL, "not resolved yet")
        self._models_signature: tuple | None = None
        self._ft_clients: dict[str, ChatClient] = {}
        self.not_ready_reason = "not loaded yet"
        self.loaded_at: float | None = None
        self.reloads = 0

    # ------------------------------------------------------------------------------------------ loading

    def refresh(self) -> bool:
        """Load the RAG bot if the materialization changed since the last load (or none is loaded); rescan the
        fine-tuned models and the best of them. Returns True when a new bot was swapped in. A failed load keeps
        the old bot."""
        # the current release when there is one (a new index is served only once promoted), else the newest index
        signature = release_signature(self.data_dir) or materialization_signature(self.data_dir, self.index_dir)
        models = (models_signature(self.data_dir), signature)
        if models != self._models_signature:  # Parquet is read only after a model, the board or the release changed
            self._finetuned = finetuned_models_rows(self.data_dir)
            self._choose(self._leaderboard())
            self._models_signature = models
        if signature == self._signature and self._bot is not None:
            return False
        if signature == (None, None):  # nothing materialized yet: nothing to try
            self.not_ready_reason = "no index yet: run `make run` first"
            return False
        with self._lock:  # one loader at a time
            if signature == self._signature and self._bot is not None:
                return False
            try:
                bot = load_served_bot(self.settings, self.resources, self.data_dir)
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

    def _choose(self, board: pd.DataFrame | None) -> None:
        """Which model `finetune` names (serve.finetune_metric) and which the served default is (serve.default_model,
        `best`: by serve.default_metric), by the current release's golden figures or else the leaderboard."""
        serve = self.settings.serve
        try:
            release = current_release(DataLayout(self.data_dir).releases_dir)
        except (OSError, ValueError) as exc:  # a broken record: the leaderboard alone decides
            log.warning("mebot serve: could not read the current release: %s", exc)
            release = None
        golden, release_id = (release.golden, release.id) if release is not None else (None, None)
        finetuned = list(self._finetuned)
        self._best = best_model(
            finetuned, serve.finetune_metric, board, golden, release_id=release_id, what="fine-tuned model"
        )
        candidates = [RAG_MODEL, EXTRACTIVE_MODEL, *finetuned]
        self._best_served = best_model(candidates, serve.default_metric, board, golden, release_id=release_id)
        self._default = resolve_default(serve.default_model, candidates, self._best_served, self._best)

    def _leaderboard(self) -> pd.DataFrame | None:
        path = DataLayout(self.data_dir).asset("leaderboard")
        try:
            return pd.read_parquet(path) if path.is_file() else None
        except (OSError, ValueError) as exc:
            log.warning("mebot serve: could not read the leaderboard: %s", exc)
            return None

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
        """`rag`, `extractive` (the best sentences quoted, no LLM), `finetune` (the best fine-tuned model, when there
        is one) and every fine-tuned model."""
        return [RAG_MODEL, EXTRACTIVE_MODEL, *([BEST_FINETUNE] if self._best else []), *self._finetuned]

    @property
    def best(self) -> ModelChoice | None:
        """The model `finetune` names and why; None while no fine-tuned model is served."""
        return self._best

    @property
    def default(self) -> ModelChoice:
        """The served default (serve.default_model resolved) and why: what /api, the page and `mebot ask` answer
        with when no model is named."""
        return self._default

    def check(self, model: str) -> str:
        """The served model `model` names (`finetune` -> the best fine-tuned one); UnknownModelError otherwise."""
        if model == BEST_FINETUNE and self._best is not None:
            return self._best.model
        if model == BEST_MODEL:  # the best served model by serve.default_metric, named in the reply
            return self._best_served.model
        if model not in self.names():
            raise UnknownModelError(f"unknown model {model!r}; the valid models are: {', '.join(self.names())}")
        return model

    def finetuned_client(self, model: str) -> ChatClient:
        chat, lora_path = finetuned_chat_settings(self.settings, self._finetuned[model])
        identity = (chat.model, lora_path and str(Path(lora_path).resolve()))
        with self._lock:
            known = self._ft_clients.get(model)
            if known is None or (known.chat.model, known.lora_path) != identity:
                self._ft_clients[model] = self.resources["chat_model"].client(
                    self.settings, lora_path=lora_path, chat=chat
                )
        return self._ft_clients[model]

    # ---------------------------------------------------------------------------------------- answering

    def retrieve(self, question: str, k: int | None = None) -> list[Source]:
        return self.bot.retrieve(question, k)

    def answer(self, model: str, question: str, on_token: Callable[[str], None] | None = None) -> Reply:
        """The answer of `model` to `question` (raises UnknownModelError, NotReadyError, QuestionError, ...);
        `on_token` gets the answer's pieces as the model generates them (the server streams them). `finetune` is
        answered by the best fine-tuned model, whose name the reply carries."""
        model = self.check(model)
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
    "BEST_FINETUNE",
    "BEST_MODEL",
    "EXTRACTIVE_MODEL",
    "FT_PREFIX",
    "RAG_MODEL",
    "ModelRegistry",
    "NotReadyError",
    "Reply",
    "UnknownModelError",
    "ModelChoice",
    "adapter_models",
    "best_model",
    "board_key",
    "resolve_default",
    "finetuned_models_rows",
    "materialization_signature",
]
