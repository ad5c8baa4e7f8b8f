"""RAG answers on the sample site's golden questions: per answer mode, fact accuracy, refusals, latency, retrieval.

    .venv/bin/python bench/bench_rag_answers.py [--chunk-questions N] [--first-person] [--answers OUT] [--quick]
        [--json OUT]

The sample site's content pages (bench/_corpus.py, as the crawl keeps them) are chunked and embedded as
`make run` does (900/100-token chunks, MiniLM windows, a flat FAISS index), and the golden questions
(golden/sample_site.yaml: 38 answerable, 6 unanswerable) are asked, one at a time, of each answer mode:

- extractive: no LLM; the best sentences of the retrieved chunks quoted with title and link, declining below
  rag.extractive_min_score (assets/index/extractive.py);
- rag (sentences): the project's defaults (mebot.yaml: hybrid retrieval, the best sentences with neighbours,
  the original prompt), the bundled SmolLM2-135M through llama.cpp, greedy decoding;
- rag without prompt-prefix reuse: the same with models.chat.reuse_prompt_prefix off (the whole prompt evaluated
  each time), asked in alternating blocks with the default, for the latency ratio;
- rag (chunks): the original context, four whole chunks (~3,600 prompt tokens): ~75 s an answer on 2 cores, so
  only with --chunk-questions N (the first N golden questions), not in `make bench`.

Scoring is assets/evaluation/golden.py's (no judge): fact accuracy (answerable questions whose answer states an
accepted fact), refusal accuracy (unanswerable ones declined), false refusals, latency p50/p95 (after one warm-up
pass that embeds the retrieved chunks' sentences, which a served bot has done; the cold pass is noted), and the
source page's hit@k/MRR among the sources the answer reports. Retrieval alone, dense vs hybrid (rag.retrieval), is
measured on the golden questions and on "deep sentences" (sentences from the second half of each page, asked
verbatim): page hit@1, hit@4, MRR; and with the default embedding backend (models.embedding.backend, int8 ONNX)
against PyTorch's vectors.

Targets (issue "RAG that answers right on 2 cores"): the best offline mode fact accuracy >= 0.70 and p50 <= 3 s; the
bundled generative mode >= 0.40 and p50 <= 3 s; hybrid retrieval no worse than dense.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, result, standalone_parser  # noqa: E402
from _corpus import sample_site_pages  # noqa: E402

sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from mebot.assets.evaluation.golden import golden_summary, load_golden, score_golden_answers  # noqa: E402
from mebot.assets.index.embeddings import embed_chunks, stack_vectors  # noqa: E402
from mebot.assets.index.extractive import extractive_answer  # noqa: E402
from mebot.assets.index.rag import RagBot  # noqa: E402
from mebot.assets.ingest.chunks import chunk_pages  # noqa: E402
from mebot.resources.chat import chat_client  # noqa: E402
from mebot.resources.embeddings import build_embedder  # noqa: E402
from mebot.resources.settings import Settings, load_settings  # noqa: E402
from mebot.resources.vector_index import load_index, write_index  # noqa: E402

SECTION = "10. RAG answers (golden questions)"
GOLDEN = ROOT / "golden" / "sample_site.yaml"
K = 4


def _with_rag(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update={"rag": settings.rag.model_copy(update=changes)})


def build_bot(settings: Settings, index_dir: Path) -> RagBot:
    chunks = chunk_pages(sample_site_pages(settings), settings.rag.chunk_tokens, settings.rag.overlap_tokens)
    embedder = build_embedder(settings.models.embedding)
    frame, _ = embed_chunks(chunks, embedder, None)
    write_index(
        index_dir, stack_vectors(frame, embedder.dim), frame["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )
    chat = chat_client(settings.models.chat)
    return RagBot(settings, embedder, load_index(index_dir, embedder.identity), chunks, chat)


def page_ranks(bot: RagBot, queries: list[tuple[str, str]]) -> list[int]:
    """1-based rank of each query's page among the top K retrieved chunks' pages (0: not there)."""
    ranks = []
    for question, page in queries:
        urls = [s.url for s in bot.retrieve(question, K)]
        ranks.append(urls.index(page) + 1 if page in urls else 0)
    return ranks


def deep_sentences(bot: RagBot, per_page: int = 3) -> list[tuple[str, str]]:
    """Up to `per_page` sentences (of 60+ characters) from the second half of every page, spread over it."""
    by_page: dict[str, list[str]] = {}
    for sentence in bot.sentences.sentences:
        by_page.setdefault(sentence.url, []).append(sentence.text)
    queries = []
    for url, texts in by_page.items():
        late = [t for t in texts[len(texts) // 2 :] if len(t) >= 60]
        step = max(1, len(late) // per_page)
        queries += [(t, url) for t in late[::step][:per_page]]
    return queries


def retrieval_results(bot: RagBot, golden_queries: list[tuple[str, str]]) -> list[Result]:
    out = []
    deep = deep_sentences(bot)
    for name, queries in (("golden questions", golden_queries), ("deep sentences", deep)):
        scores = {}
        for mode in ("dense", "hybrid"):
            bot.settings = _with_rag(bot.settings, retrieval=mode)
            ranks = page_ranks(bot, queries)
            scores[mode] = (
                statistics.mean(r == 1 for r in ranks),
                statistics.mean(r > 0 for r in ranks),
                statistics.mean(1 / r if r else 0 for r in ranks),
            )
        for n, metric in enumerate(("hit@1", f"hit@{K}", "MRR")):
            out.append(
                result(
                    SECTION,
                    f"{name} ({len(queries)}): page {metric}, hybrid",
                    [scores["hybrid"][n]],
                    "share",
                    target=(">=", round(scores["dense"][n], 3)),
                    note=f"dense {scores['dense'][n]:.3f} (target: no regression)",
                )
            )
    return out


def backend_results(settings: Settings, bot: RagBot, index_dir: Path, golden_queries) -> list[Result]:
    """Retrieval with the default embedding backend (bot) against PyTorch's vectors (models.embedding.backend
    torch), dense and hybrid: the quantized model must retrieve no worse."""
    backend = settings.models.embedding.backend
    if backend == "torch":
        return []
    embedding = settings.models.embedding.model_copy(update={"backend": "torch"})
    torch_bot = build_bot(
        settings.model_copy(update={"models": settings.models.model_copy(update={"embedding": embedding})}), index_dir
    )
    out = []
    for name, queries in (("golden questions", golden_queries), ("deep sentences", deep_sentences(bot))):
        for mode in ("dense", "hybrid"):
            ranks = {}
            for label, each in (("default", bot), ("torch", torch_bot)):
                each.settings = _with_rag(each.settings, retrieval=mode)
                ranks[label] = page_ranks(each, queries)
            hit = {label: statistics.mean(r > 0 for r in values) for label, values in ranks.items()}
            mrr = {label: statistics.mean(1 / r if r else 0 for r in values) for label, values in ranks.items()}
            out.append(
                result(
                    SECTION,
                    f"{name} ({len(queries)}), {mode}: page hit@{K}, backend {backend}",
                    [round(hit["default"], 3)],  # both rounded alike: equal shares meet the target
                    "share",
                    target=(">=", round(hit["torch"], 3)),
                    note=f"torch {hit['torch']:.3f}; MRR {mrr['default']:.3f} vs torch {mrr['torch']:.3f}",
                )
            )
    bot.settings = settings
    return out


def answer_all(name: str, ask, questions) -> pd.DataFrame:
    rows = []
    for q in questions:
        answer = ask(q.question)
        sources = json.dumps([{"url": s.url, "title": s.title} for s in answer.sources])
        rows.append([q.id, name, answer.answer, sources, answer.latency_s])
    return pd.DataFrame(rows, columns=["question_id", "model", "answer", "sources_json", "latency_s"])


def prefix_reuse_passes(bot: RagBot, settings: Settings, questions, block: int = 11) -> tuple[pd.DataFrame, ...]:
    """The rag answers with models.chat.reuse_prompt_prefix on (the default) and off, in blocks of `block`
    questions, each block asked both ways in alternating order, so that load drift hits both alike (per question
    would defeat the reuse: the two clients share one model, and the off one evaluates from the start)."""
    clients = {
        "rag": bot.chat,
        "rag-no-reuse": chat_client(settings.models.chat.model_copy(update={"reuse_prompt_prefix": False})),
    }
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in clients}
    for n, start in enumerate(range(0, len(questions), block)):
        names = list(clients) if n % 2 == 0 else list(reversed(clients))
        for name in names:
            bot.chat = clients[name]
            frames[name].append(answer_all(name, bot.ask, questions[start : start + block]))
    bot.chat = clients["rag"]
    return tuple(pd.concat(frames[name], ignore_index=True) for name in clients)


def prefix_reuse_results(answers: pd.DataFrame, summary: dict) -> list[Result]:
    on, off = (answers[answers["model"] == name].set_index("question_id") for name in ("rag", "rag-no-reuse"))
    same = int((on["answer"] == off.loc[on.index, "answer"]).sum())
    p50_on, p50_off = statistics.median(on["latency_s"]), statistics.median(off["latency_s"])
    return [
        result(
            SECTION,
            "rag: latency p50 with prompt-prefix reuse / without",
            [p50_on / p50_off],
            "ratio",
            target=("<=", 1.0),
            note=f"{p50_on:.2f} s vs {p50_off:.2f} s; the same answer for {same} of {len(on)} questions; "
            f"fact accuracy without reuse {summary['rag-no-reuse']['fact_accuracy']:.3f}",
        )
    ]


def mode_results(label: str, summary: dict, targets: tuple[float, float] | None, note: str = "") -> list[Result]:
    accuracy_target = (">=", targets[0]) if targets else None
    latency_target = ("<=", targets[1]) if targets else None
    n = summary["n_answerable"]
    return [
        result(
            SECTION,
            f"{label}: fact accuracy",
            [summary["fact_accuracy"]],
            "share",
            target=accuracy_target,
            note=f"{round(summary['fact_accuracy'] * n)} of {n} answerable{'; ' + note if note else ''}",
        ),
        result(
            SECTION,
            f"{label}: refusal accuracy",
            [summary["refusal_accuracy"]],
            "share",
            note=f"of {summary['n_unanswerable']} unanswerable",
        ),
        result(SECTION, f"{label}: false refusals", [summary["false_refusal_rate"]], "share"),
        result(SECTION, f"{label}: latency p50", [summary["latency_p50"]], "s", target=latency_target),
        result(SECTION, f"{label}: latency p95", [summary["latency_p95"]], "s"),
        result(
            SECTION, f"{label}: source page hit@{K}", [summary["hit_at_k"]], "share", note=f"MRR {summary['mrr']:.3f}"
        ),
    ]


def run(
    quick: bool, chunk_questions: int, answers_path: Path | None = None, first_person: bool = False
) -> list[Result]:
    settings = _with_rag(load_settings(ROOT / "mebot.yaml"), temperature=0.0)
    golden = load_golden(GOLDEN)
    questions = list(golden.questions)
    if quick:  # a third of them, unanswerable ones included
        questions = questions[::3] + [q for q in questions[1::3] if not q.answerable]
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as tmp:
        try:
            bot = build_bot(settings, Path(tmp) / "index")
        except Exception as exc:  # noqa: BLE001 - the table says what failed
            return [failed(SECTION, "index build", f"{type(exc).__name__}: {exc}")]
        golden_queries = [(q.question, q.source) for q in questions if q.answerable]
        out = retrieval_results(bot, golden_queries)
        out += backend_results(settings, bot, Path(tmp) / "index-torch", golden_queries)
        bot.settings = settings
        frames = []
        cold = answer_all("extractive", lambda q: extractive_answer(bot, q), questions)  # embeds the sentences
        cold_p50 = statistics.median(cold["latency_s"])
        frames.append(answer_all("extractive", lambda q: extractive_answer(bot, q), questions))
        with_reuse, without_reuse = prefix_reuse_passes(bot, settings, questions)
        frames += [with_reuse, without_reuse]
        rag_seconds = float(with_reuse["latency_s"].sum())
        if first_person:  # the same, told to answer in the first person as the persona (rag.first_person)
            bot.settings = _with_rag(settings, first_person=not settings.rag.first_person)
            frames.append(answer_all("rag-persona", bot.ask, questions))
            bot.settings = settings
        if chunk_questions:
            bot.settings = _with_rag(settings, context="chunks")
            frames.append(answer_all("rag-chunks", bot.ask, questions[:chunk_questions]))
        answers = pd.concat(frames, ignore_index=True)
        if answers_path is not None:
            answers.to_json(answers_path, orient="records", indent=1, force_ascii=False)
        scores = score_golden_answers(golden, answers, K)
        summary = golden_summary(scores)
    rag = settings.rag
    context = (
        f"{rag.retrieval} retrieval, {rag.context_sentences} sentences ±{rag.context_neighbours}, "
        f"≤ {rag.context_tokens} tokens; {rag.top_k} chunks searched"
    )
    out += mode_results(
        "extractive (no LLM)",
        summary["extractive"],
        (0.70, 3.0),
        f"{rag.extractive_sentences} sentences ±{rag.extractive_neighbours}; cold first pass p50 {cold_p50:.2f} s",
    )
    out += mode_results(
        "rag, SmolLM2-135M, sentences (default)", summary["rag"], (0.40, 3.0), f"{context}; {rag_seconds:.0f} s in all"
    )
    out += prefix_reuse_results(answers, summary)
    if first_person:
        out += mode_results(
            f"rag, SmolLM2-135M, sentences, rag.first_person {not rag.first_person}", summary["rag-persona"], None
        )
    if chunk_questions:
        out += mode_results(
            f"rag, SmolLM2-135M, whole chunks (first {chunk_questions} questions)", summary["rag-chunks"], None
        )
    return out


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--chunk-questions", type=int, default=0, help="also ask the first N in chunks mode (slow)")
    parser.add_argument("--answers", type=Path, default=None, help="also write every answer to this JSON file")
    parser.add_argument(
        "--first-person", action="store_true", help="also ask with rag.first_person the other way (the persona setting)"
    )
    args = parser.parse_args()
    return finish(run(args.quick, args.chunk_questions, args.answers, args.first_person), args.json)


if __name__ == "__main__":
    sys.exit(main())
