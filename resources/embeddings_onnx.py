"""The sentence-transformers embedder run by ONNX Runtime (`models.embedding.backend: onnx` or `onnx_int8`).

sentence-transformers' own ONNX backend needs `optimum`, whose releases pin transformers below the 5.x this
project installs, so the model's transformer is exported here with `torch.onnx.export` (once per model file and
torch and ONNX Runtime release, into ~/.cache/mebot/onnx/: layout.model_cache_dir) and, for `onnx_int8`, its
weights quantized per channel by ONNX Runtime's dynamic quantization. The tokenizer, the windows and the mean
pooling are the model's own; fp32 batches texts of like length (little padding), int8 runs each text alone
(texts side by side, one thread each).
bench/bench_embeddings.py measures both against PyTorch's `encode` (speed, and the cosine of each vector with
PyTorch's), and bench/bench_rag_answers.py what retrieval does with them.

fp32 vectors equal PyTorch's to float precision and share its identity (and so its cached vectors); int8
vectors differ slightly (cosine ~0.99 with PyTorch's) and have an identity of their own.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mebot.resources.cpu_share import cpu_cores, scheduled_threads
from mebot.resources.embeddings import DEFAULT_WINDOW_TOKENS, SentenceTransformerEmbedder
from mebot.resources.files import atomic_output, file_sha256
from mebot.resources.hashing import stable_hash
from mebot.resources.layout import model_cache_dir

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnx", "onnx_int8")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
EXPORT_RECIPE = "eager-attention"  # part of the file name: a change of how it is exported is another file
# How the int8 file is quantized, in its name and in the vectors' identity: per output channel, weights in 7 bits
# (ONNX Runtime's reduce_range). Full 8-bit weights times 8-bit activations can overflow the 16-bit sums of the
# AVX2 and AVX-512 kernels of CPUs without VNNI (ONNX Runtime's quantization guide), so a vector would depend on
# the CPU; 7 bits cannot, and cost little (mean cosine with fp32 0.9915 against 0.9931 on 8 bits, 40 sample-site
# passages on a VNNI CPU, where both are exact).
INT8_RECIPE = "int8-7bit"
_SESSIONS: dict[tuple[str, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def check_mean_pooling(model: Any) -> None:
    """Refuse a sentence-transformers model whose pooling this backend would not reproduce."""
    names = [type(module).__name__ for module in model]
    pooling = model[1] if len(names) > 1 else None
    config = pooling.get_config_dict() if pooling is not None and hasattr(pooling, "get_config_dict") else {}
    mean = config.get("pooling_mode") == "mean" or config.get("pooling_mode_mean_tokens") is True
    if names[:2] != ["Transformer", "Pooling"] or not mean or not set(names[2:]) <= {"Normalize"}:
        raise ValueError(
            f"models.embedding.backend onnx reproduces Transformer -> mean Pooling (-> Normalize) models; "
            f"this one is {' -> '.join(names)} ({config or 'pooling unknown'}): use backend torch"
        )


def onnx_model_path(model: Any, name: str, cache_dir: Path) -> Path:
    """Where the fp32 export of `model` lives (the int8 one beside it: `int8_path`): named by its weights' hash
    and the torch and ONNX Runtime versions, so another model or release never reads a stale export."""
    import onnxruntime
    import torch

    folder = Path(model[0].auto_model.name_or_path)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise ValueError(f"models.embedding.backend onnx: no weights file in {folder}; use backend torch")
    digest = stable_hash(
        *(file_sha256(w) for w in weights), torch.__version__, onnxruntime.__version__, OPSET, EXPORT_RECIPE
    )
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.removeprefix("sentence-transformers/"))
    return cache_dir / f"{stem}-{digest}.onnx"


def int8_path(fp32: Path) -> Path:
    return fp32.with_name(f"{fp32.stem}.{INT8_RECIPE}.onnx")


def export_onnx(model: Any, path: Path) -> Path:
    """The transformer of a sentence-transformers `model` as ONNX (token embeddings out), written atomically."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001 - traced tensors
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    # A copy with eager attention: its plain MatMul/Softmax graph runs faster in ONNX Runtime than the export of
    # PyTorch's fused attention (SDPA) — int8 2.2-2.7x PyTorch's encode against 1.8x (bench_embeddings.py).
    transformer = copy.deepcopy(model[0].auto_model).eval()
    transformer.set_attn_implementation("eager")
    sample = model.tokenizer(["an example", "a second, longer example text"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "token_embeddings")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes the dynamic axes already cover
        torch.onnx.export(
            TokenEmbeddings(transformer),
            tuple(sample[name] for name in INPUTS),
            str(tmp),
            input_names=list(INPUTS),
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript, and it handles BERT's masks
        )
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    """`source` with its weights quantized per output channel to 7-bit integers (INT8_RECIPE; per-tensor loses
    too much on MiniLM: cosine with the fp32 vectors down to ~0.90, against ~0.99 per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            extra_options={"DefaultTensorType": 1},  # FLOAT, for outputs of fused (com.microsoft) ops
        )
    return path


def onnx_session(model: Any, fp32: Path, backend: str, threads: int) -> Any:
    """An ONNX Runtime session for `model` (exported to `fp32` and quantized beside it on first use)."""
    import onnxruntime

    path = int8_path(fp32) if backend == "onnx_int8" else fp32
    with _SESSIONS_LOCK:
        session = _SESSIONS.get((str(path), threads))
        if session is not None:
            return session
        if not path.is_file():
            if not fp32.is_file():
                log.info("exporting %s to ONNX (%s)", model[0].auto_model.name_or_path, fp32)
                export_onnx(model, fp32)
            if backend == "onnx_int8":
                quantize_int8(fp32, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _SESSIONS[(str(path), threads)] = session
        return session


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each text's token embeddings over its attention mask (sentence-transformers' mean pooling)."""
    return (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)


class OnnxSentenceTransformerEmbedder(SentenceTransformerEmbedder):
    """A sentence-transformers model (mean pooling) run by ONNX Runtime; tokens and windows as the torch one."""

    def __init__(
        self,
        model_name: str,
        backend: str = "onnx_int8",
        batch_size: int = 32,
        window_overlap_tokens: int = 32,
        window_tokens: int = DEFAULT_WINDOW_TOKENS,
        cache_dir: str | Path | None = None,
        model: Any = None,
    ):
        if backend not in ONNX_BACKENDS:
            raise ValueError(f"models.embedding.backend {backend!r}: the ONNX backends are {', '.join(ONNX_BACKENDS)}")
        super().__init__(model_name, batch_size, window_overlap_tokens, window_tokens, model=model)
        check_mean_pooling(self.model)
        self.backend = backend
        cache_dir = Path(cache_dir) if cache_dir is not None else model_cache_dir() / "onnx"
        self.onnx_path = onnx_model_path(self.model, model_name, cache_dir)  # hashes the weights once, here
        self.max_length = int(self.model.max_seq_length)
        if backend == "onnx_int8":  # other vectors: a cache and an index of their own
            self.identity += f":{INT8_RECIPE}"

    def _feed(self, batch: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The model's inputs for `batch` (tokenized here, in the calling thread: the tokenizer is not shared
        between threads) and its attention mask for pooling."""
        encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feed = {name: encoded[name].astype(np.int64) for name in INPUTS if name in encoded}
        if "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return feed, encoded["attention_mask"][..., None].astype(np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        threads = scheduled_threads() or cpu_cores()  # what PyTorch takes by default
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if self.backend == "onnx_int8":
            # One text per run: ONNX Runtime quantizes the activations with one scale per batch, so in a batch a
            # text's vector would move with its batchmates (cosine down to 0.98 with its vector alone). Runs that
            # small use the cores better side by side, one thread each, than split across them (1.8x on
            # 2 cores: bench_embeddings.py); each text's vector is the same either way.
            session = onnx_session(self.model, self.onnx_path, self.backend, 1)
            feeds = [self._feed([text]) for text in texts]
            with ThreadPoolExecutor(max_workers=threads) as pool:
                pooled = pool.map(lambda item: mean_pool(session.run(None, item[0])[0], item[1]), feeds)
                for row, vector in enumerate(pooled):
                    vectors[row] = vector[0]
            return vectors
        session = onnx_session(self.model, self.onnx_path, self.backend, threads)
        order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths pad little
        for at in range(0, len(texts), self.batch_size):
            rows = order[at : at + self.batch_size]
            feed, mask = self._feed([texts[i] for i in rows])
            vectors[rows] = mean_pool(session.run(None, feed)[0], mask)
        return vectors
