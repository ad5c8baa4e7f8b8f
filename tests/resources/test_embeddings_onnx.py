"""The embedder run by ONNX Runtime (models.embedding.backend onnx / onnx_int8): the bundled MiniLM exported once
per cache folder, vectors that agree with PyTorch's, its own identity when quantized, input order kept."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mebot.resources import embeddings_onnx
from mebot.resources.embeddings import SentenceTransformerEmbedder, build_embedder
from mebot.resources.embeddings_onnx import OnnxSentenceTransformerEmbedder, check_mean_pooling
from mebot.resources.settings import EmbeddingModelSettings

TEXTS = [
    "I bought my first telescope, a 4-inch refractor, in 1998 for £62 at a car boot sale.",
    "Comet C/2023 A3 was brightest in the second week of October.",
    "Kepler's dental surgery set me back £1,240.",
    "Short.",
    "Last summer I rode my bike from Lyon to Geneva in two days, " * 6,
]
QUESTIONS = {
    "How much did the first telescope cost?": 0,
    "When was the comet at its brightest?": 1,
    "What did the cat's dental surgery cost?": 2,
    "Where did you cycle to last summer?": 4,
}


class Transformer(SimpleNamespace):
    pass


class Pooling(SimpleNamespace):
    def get_config_dict(self) -> dict:
        return {"pooling_mode": self.mode}


class Normalize(SimpleNamespace):
    pass


@pytest.mark.parametrize(
    ("modules", "accepted"),
    [
        ([Transformer(), Pooling(mode="mean"), Normalize()], True),
        ([Transformer(), Pooling(mode="mean")], True),
        ([Transformer(), Pooling(mode="cls"), Normalize()], False),
        ([Transformer(), Pooling(mode="mean"), Transformer()], False),
        ([Transformer()], False),
    ],
)
def test_only_mean_pooled_models_are_run_by_onnx(modules: list, accepted: bool) -> None:
    if accepted:
        check_mean_pooling(modules)
    else:
        with pytest.raises(ValueError, match="use backend torch"):
            check_mean_pooling(modules)


def test_an_unknown_backend_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="backend"):
        EmbeddingModelSettings(backend="gpu")


@pytest.fixture(scope="module")
def torch_minilm() -> SentenceTransformerEmbedder:
    return build_embedder(EmbeddingModelSettings(backend="torch"))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def _embedder(backend: str, cache: Path) -> OnnxSentenceTransformerEmbedder:
    return OnnxSentenceTransformerEmbedder("all-MiniLM-L6-v2", backend, cache_dir=cache)


@pytest.mark.full
def test_fp32_onnx_vectors_equal_pytorchs_and_share_their_identity(torch_minilm, onnx_cache: Path) -> None:
    onnx = _embedder("onnx", onnx_cache)
    assert onnx.identity == torch_minilm.identity  # the same vectors: the same cache entries and index
    cosines = (onnx.embed(TEXTS) * torch_minilm.embed(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.9999


@pytest.mark.full
def test_int8_vectors_are_close_retrieve_the_same_and_have_their_own_identity(torch_minilm, onnx_cache) -> None:
    int8 = _embedder("onnx_int8", onnx_cache)
    assert int8.identity == torch_minilm.identity + ":int8-7bit"
    passages = int8.embed(TEXTS)
    assert (passages * torch_minilm.embed(TEXTS)).sum(axis=1).min() > 0.97
    questions = int8.embed(list(QUESTIONS))
    assert (questions @ passages.T).argmax(axis=1).tolist() == list(QUESTIONS.values())


@pytest.mark.full
@pytest.mark.parametrize("backend", ["onnx", "onnx_int8"])
def test_a_texts_vector_does_not_depend_on_the_texts_embedded_with_it(onnx_cache: Path, backend: str) -> None:
    onnx = _embedder(backend, onnx_cache)
    onnx.batch_size = 2  # several batches (fp32), each of texts of like length, in another order than given
    together = onnx.embed(TEXTS)
    alone = np.vstack([onnx.embed([text]) for text in TEXTS])
    assert np.allclose(together, alone, atol=1e-5)  # the input order kept, and nothing from a batchmate


@pytest.mark.full
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_int8_vectors_are_the_same_however_many_texts_run_side_by_side(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    onnx = _embedder("onnx_int8", onnx_cache)
    monkeypatch.setattr(embeddings_onnx, "scheduled_threads", lambda: 1)
    one_at_a_time = onnx.embed(TEXTS * 3)
    monkeypatch.setattr(embeddings_onnx, "scheduled_threads", lambda: threads)
    side_by_side = onnx.embed(TEXTS * 3)
    assert np.array_equal(one_at_a_time, side_by_side)  # bit for bit, in the order given
    assert np.array_equal(side_by_side[: len(TEXTS)], side_by_side[len(TEXTS) : 2 * len(TEXTS)])


@pytest.mark.full
def test_the_export_is_made_once_per_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports: list[Path] = []
    real_export = embeddings_onnx.export_onnx

    def counting_export(model, path: Path) -> Path:
        exports.append(path)
        return real_export(model, path)

    monkeypatch.setattr(embeddings_onnx, "export_onnx", counting_export)
    monkeypatch.setattr(embeddings_onnx, "_SESSIONS", {})
    first = _embedder("onnx_int8", tmp_path).embed(TEXTS[:2])
    monkeypatch.setattr(embeddings_onnx, "_SESSIONS", {})  # as a new process would: read from the folder
    second = _embedder("onnx", tmp_path).embed(TEXTS[:2])  # fp32 was written on the way to int8
    again = _embedder("onnx_int8", tmp_path).embed(TEXTS[:2])
    assert len(exports) == 1 and exports[0].parent == tmp_path
    assert sorted(p.name == embeddings_onnx.int8_path(exports[0]).name for p in tmp_path.glob("*.onnx")) == [
        False,
        True,
    ]
    assert np.array_equal(first, again) and (first * second).sum(axis=1).min() > 0.97


@pytest.mark.full
def test_a_text_longer_than_the_model_reads_is_refused_not_truncated(onnx_cache: Path) -> None:
    onnx = _embedder("onnx_int8", onnx_cache)
    with pytest.raises(ValueError, match="silently truncated"):
        onnx.embed(["word " * 400])


@pytest.mark.full
def test_embedding_does_not_hash_the_weights_again(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = _embedder("onnx_int8", onnx_cache)  # the export's name (a hash of the weights) is worked out here
    hashed: list[Path] = []
    monkeypatch.setattr(embeddings_onnx, "file_sha256", lambda path: hashed.append(path) or "x")
    onnx.embed(TEXTS[:2])
    onnx.embed(["a question asked of the served bot"])
    assert hashed == []
