"""`rouge_scores`, per model (partitions of `model_answers`): ROUGE-1/2/L precision, recall and F1 of each answer
against its reference passage (rouge-score, `eval.rouge_stemmer`, `eval.rouge_tokenizer`), and `similarity`: the
cosine between the answer's and the reference's embeddings (models.embedding; a text longer than the model reads
is embedded window by window and the windows averaged, never truncated). Unanswered rows keep NaN (missing, not 0).
"""

import math
import re
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers

from mebot.assets.evaluation.answers import answered_mask, model_partitions
from mebot.assets.outputs import content_output, mean_metadata
from mebot.resources.embeddings import Embedder, EmbedderResource, EmbeddingCache, embed_with_cache
from mebot.resources.settings import EvalSettings, Settings, SettingsResource, reads_settings

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_COLUMNS: list[str] = [f"{kind}_{part}" for kind in ROUGE_TYPES for part in ("precision", "recall", "f1")]

ROUGE_SCORE_COLUMNS = ["qa_id", "model", "answered", *ROUGE_COLUMNS, "similarity"]
_UNICODE_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer keeps only a-z0-9, so Greek, Cyrillic or CJK text has no tokens and scores
    0 whatever the answer; this one keeps letters and digits of every script. Like the default it lowercases and
    Porter-stems words over 3 characters, but only ASCII ones (the Porter stemmer is for English)."""

    def __init__(self, use_stemmer: bool = False) -> None:
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        words = _UNICODE_WORD.findall(text.lower())
        if self._stemmer is None:
            return words
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in words]


def _text_or_empty(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def rouge_table(
    references: list[str],
    answers: list[str],
    *,
    use_stemmer: bool = True,
    tokenizer: Literal["default", "unicode"] = "default",
) -> pd.DataFrame:
    """One row per (reference, answer) pair, in input order, with ROUGE_COLUMNS from rouge-score's RougeScorer.

    `tokenizer="unicode"` scores non-Latin text (see UnicodeTokenizer). An empty or missing answer (None, NaN)
    scores 0 everywhere."""
    if len(references) != len(answers):
        raise ValueError(f"rouge_table got {len(references)} references but {len(answers)} answers; pass one each")
    if tokenizer == "default":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    elif tokenizer == "unicode":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer(use_stemmer))
    else:
        raise ValueError(f'rouge tokenizer {tokenizer!r} is not known; use "default" or "unicode"')
    rows = []
    for reference, answer in zip(references, answers, strict=True):
        reference, answer = _text_or_empty(reference), _text_or_empty(answer)
        if not answer.strip() or not reference.strip():
            rows.append([0.0] * len(ROUGE_COLUMNS))
            continue
        scores = scorer.score(reference, answer)  # rouge-score's order: target first, prediction second
        rows.append([float(v) for kind in ROUGE_TYPES for v in scores[kind]])
    return pd.DataFrame(rows, columns=ROUGE_COLUMNS, dtype=float)


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of `a` against row i of `b` (1-D inputs are one row each); a zero vector's similarity is 0."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarities needs arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def embed_texts(embedder: Embedder, cache: EmbeddingCache | None, texts: list[str]) -> np.ndarray:
    """One unit vector per text: the mean of its windows' vectors (a text longer than the model reads is never
    truncated); an empty text gets a zero vector."""
    windows = [embedder.windows(text) if text.strip() else [] for text in texts]
    flat = [w for ws in windows for w in ws]
    vectors, _, _ = embed_with_cache(embedder, cache, flat)
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    start = 0
    for row, ws in enumerate(windows):
        if ws:
            mean = vectors[start : start + len(ws)].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            out[row] = mean / norm if norm > 0 else mean
        start += len(ws)
    return out


def score_texts(
    references: list[str],
    answers: list[str],
    answered: pd.Series,
    eval_settings: EvalSettings,
    embedder: Embedder | None,
    cache: EmbeddingCache | None = None,
) -> pd.DataFrame:
    """ROUGE_COLUMNS and similarity per pair; NaN where there is no answer (missing, not zero). Without an
    embedder, similarity is NaN."""
    scores = rouge_table(
        references, answers, use_stemmer=eval_settings.rouge_stemmer, tokenizer=eval_settings.rouge_tokenizer
    )
    scores["similarity"] = math.nan
    mask = answered.to_numpy()
    if embedder is not None and mask.any():
        kept_refs = [r for r, keep in zip(references, mask, strict=True) if keep]
        kept_answers = [a for a, keep in zip(answers, mask, strict=True) if keep]
        similarity = cosine_similarities(
            embed_texts(embedder, cache, kept_answers), embed_texts(embedder, cache, kept_refs)
        )
        scores.loc[mask, "similarity"] = similarity
    scores.loc[~mask, [*ROUGE_COLUMNS, "similarity"]] = math.nan
    return scores


def rouge_and_similarity(
    answers: pd.DataFrame, eval_settings: EvalSettings, embedder: Embedder | None, cache: EmbeddingCache | None
) -> pd.DataFrame:
    """ROUGE_SCORE_COLUMNS for the rows of a model_answers partition."""
    answered = answered_mask(answers["answer"], answers["error"]).reset_index(drop=True)
    scores = score_texts(
        answers["reference"].fillna("").astype(str).tolist(),
        answers["answer"].fillna("").astype(str).tolist(),
        answered,
        eval_settings,
        embedder,
        cache,
    )
    frame = pd.concat([answers[["qa_id", "model"]].reset_index(drop=True), answered.rename("answered"), scores], axis=1)
    return frame[ROUGE_SCORE_COLUMNS]


def _rouge_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    model_answers: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Per answer of one model: ROUGE-1/2/L precision, recall and F1 against the reference passage, and the
    cosine similarity of their embeddings (semantic similarity). Unanswered rows keep NaN (missing, not 0)."""
    config = settings.for_asset(context)
    embedding_model = embedder.embedder(config)
    frame = rouge_and_similarity(model_answers, config.eval, embedding_model, embedder.cache())
    answered = frame[frame["answered"]]
    means = mean_metadata(answered, [*ROUGE_COLUMNS, "similarity"])
    shown = {
        name: means[name].value for name in ("rouge1_f1_mean", "rougeL_f1_mean", "similarity_mean") if name in means
    }
    context.log.info(f"{context.partition_key}: {len(answered)}/{len(frame)} answered; {shown}")
    return content_output(
        frame,
        {
            **means,
            "answered": dg.MetadataValue.int(len(answered)),
            "missing": dg.MetadataValue.int(len(frame) - len(answered)),
            "rouge_stemmer": dg.MetadataValue.bool(config.eval.rouge_stemmer),
            "rouge_tokenizer": dg.MetadataValue.text(config.eval.rouge_tokenizer),
            "embedding_model": dg.MetadataValue.text(embedding_model.identity),
        },
        version_of=ROUGE_SCORE_COLUMNS,
    )


def rouge_scores_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`rouge_scores`, one partition per model of `graph_settings`."""
    return dg.asset(
        name="rouge_scores",
        group_name="evaluation",
        kinds={"pytorch", "parquet"},
        code_version="1",
        partitions_def=model_partitions(graph_settings),
        metadata=reads_settings("eval.rouge_stemmer", "eval.rouge_tokenizer", "models.embedding"),
    )(_rouge_scores)
