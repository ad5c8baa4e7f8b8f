"""The whole graph and every answer on a real public technical blog: Christopher Olah's colah.github.io (neural
networks and information theory: inline and display math in MathJax, some code, tables, tag listings).

    .venv/bin/python bench/bench_real_blog.py [--mirror DIR] [--max-pages 80] [--json OUT]

The blog's generated HTML is read at bench time from a local git mirror of github.com/colah/colah.github.io (the
`fetch` tool puts one under /work/.mirror/colah+colah.github.io/repo; any clone works: `--mirror PATH/.git`), never
committed here. The bench writes the HTML of its newest commit to a temporary folder, serves it on 127.0.0.1, and:
1. runs `mebot run` on it with an isolated data dir, Dagster home and model cache (the project's settings, with the
   crawl pointed at the blog and sized down like the end-to-end test: fewer question passages, two training
   steps), keeping the default `eval.golden_path`, the sample site's file, which must be skipped with a note;
2. reports pages kept, listings skipped, the run's time and whether it ended with a leaderboard;
3. starts `mebot serve` on that data and asks VISITOR_QUESTIONS (written for this blog, each with the page that
   answers it) through GET /api (qa and extractive) and POST /v1/chat/completions, counting 5xx answers and
   retrieval hit@4 (the page among the first four references of the /api qa answer).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import pandas as pd  # noqa: E402
from bench_serve import start_server, stop_server  # noqa: E402

from mebot.resources.local_site import LocalSite  # noqa: E402
from tests.helpers import E2E_MAX_PASSAGES, write_settings  # noqa: E402

SECTION = "11. A real blog"
DEFAULT_MIRROR = Path("/work/.mirror/colah+colah.github.io/repo")
RUN_TIMEOUT_S = 3600

# A visitor's questions about the blog, each with the page that answers it (site-relative path).
VISITOR_QUESTIONS = [
    ("What are the gates of an LSTM and what does each one do?", "/posts/2015-08-Understanding-LSTMs/"),
    ("What is a GRU and how does it differ from an LSTM?", "/posts/2015-08-Understanding-LSTMs/"),
    ("Why is reverse-mode differentiation faster than forward-mode for neural networks?", "/posts/2015-08-Backprop/"),
    ("What is cross-entropy, in terms of codes and message lengths?", "/posts/2015-09-Visual-Information/"),
    ("What is the KL divergence between two distributions?", "/posts/2015-09-Visual-Information/"),
    ("Explain convolution with the example of dropping a ball.", "/posts/2014-07-Understanding-Convolutions/"),
    ("How does t-SNE visualize MNIST?", "/posts/2014-10-Visualizing-MNIST/"),
    ("What is the manifold hypothesis?", "/posts/2014-03-NN-Manifolds-Topology/"),
    ("What are word embeddings and what is word2vec?", "/posts/2014-07-NLP-RNNs-Representations/"),
    ("How do neural network architectures correspond to functional programming types?", "/posts/2015-09-NN-Types-FP/"),
    ("Why did you start Distill?", "/posts/2017-03-Distill/"),
    ("How did you use PageRank on fanfiction?", "/posts/2014-02-Fanfiction-Graphs-PageRank/"),
    ("What are the building blocks of a convolutional network?", "/posts/2014-07-Conv-Nets-Modular/"),
    (
        "Can you explain \\(\\frac{\\partial e}{\\partial a} = "
        "\\frac{\\partial e}{\\partial c}\\cdot\\frac{\\partial c}{\\partial a}\\)?",
        "/posts/2015-08-Backprop/",
    ),
]


def export_html(mirror: Path, folder: Path) -> int:
    """The HTML (and robots.txt) of the mirror's newest commit written to `folder / "site"`; returns how many files.
    File by file: a mirror may lack its largest blobs (data files), which `git archive` refuses to skip."""
    git = ["git", "--git-dir", str(mirror)]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True, check=True)
    wanted = [n for n in names.stdout.splitlines() if n.endswith(".html") or n == "robots.txt"]
    site = folder / "site"
    written = 0
    for name in wanted:
        blob = subprocess.run([*git, "show", f"HEAD:{name}"], capture_output=True)
        if blob.returncode == 0:
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob.stdout)
            written += 1
    return written


def run_graph(base_url: str, folder: Path, max_pages: int) -> tuple[subprocess.CompletedProcess, float, Path, Path]:
    config = write_settings(
        folder / "mebot.yaml",
        {
            "site": {"start_urls": [base_url + "/"], "download_delay": 0, "max_pages": max_pages},
            "persona": {"name": "Christopher Olah"},
            "qa": {"max_passages": E2E_MAX_PASSAGES},
            "finetune": {"local": {"max_steps": 2, "max_seq_tokens": 256}},
            "eval": {"max_questions": 4, "validity_sample": 2},
        },
    )
    data = folder / "data"
    env = {
        **os.environ,
        "MEBOT_DATA_DIR": str(data),
        "MEBOT_DAGSTER_HOME": str(folder / "home"),
        "MEBOT_MODEL_CACHE": str(folder / "cache"),
    }
    (folder / "home").mkdir()
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=RUN_TIMEOUT_S,
    )
    return completed, time.perf_counter() - started, config, data


def crawl_counts(log: str) -> tuple[int, int]:
    """(pages kept, listings skipped) from the crawl's summary line in the run's log."""
    match = re.search(r"crawl kept (\d+) pages; skipped (\{[^}]*\})", log)
    if not match:
        return -1, -1
    skipped = json.loads(match.group(2).replace("'", '"'))
    return int(match.group(1)), int(skipped.get("index_page", 0)) + int(skipped.get("listing_page", 0))


def ask_visitors(url: str) -> tuple[int, int, list[int], dict[str, int]]:
    """(answers, 5xx count, hit ranks (0: not among the first 4), status counts) over every question and path."""
    answers, server_errors, ranks, statuses = 0, 0, [], {}
    with httpx.Client(base_url=url, timeout=900) as client:
        for question, page in VISITOR_QUESTIONS:
            calls = [
                ("api qa", lambda q=question: client.get("/api", params={"query": q, "model": "qa"})),
                ("api extractive", lambda q=question: client.get("/api", params={"query": q, "model": "extractive"})),
                (
                    "v1 extractive",
                    lambda q=question: client.post(
                        "/v1/chat/completions",
                        json={"model": "extractive", "messages": [{"role": "user", "content": q}]},
                    ),
                ),
            ]
            for name, call in calls:
                response = call()
                answers += 1
                statuses[f"{name} {response.status_code}"] = statuses.get(f"{name} {response.status_code}", 0) + 1
                server_errors += response.status_code >= 500
                if name == "api qa" and response.status_code == 200:
                    urls = [d["metadata"]["url"] for d in response.json()["sourceDocuments"][:4]]
                    paths = [httpx.URL(u).path for u in urls]
                    ranks.append(next((i + 1 for i, p in enumerate(paths) if p == page), 0))
    return answers, server_errors, ranks, statuses


def run(mirror: Path, max_pages: int) -> list[Result]:
    if not (mirror / "HEAD").is_file():
        return [failed(SECTION, "run", f"no git mirror at {mirror}: fetch github.com/colah/colah.github.io first")]
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-real-blog-") as tmp:
        folder = Path(tmp)
        files = export_html(mirror, folder)
        with LocalSite(folder / "site") as served:
            completed, seconds, config, data = run_graph(served.base_url, folder, max_pages)
            log = completed.stdout + completed.stderr
            Path(tempfile.gettempdir(), "bench-real-blog-run.log").write_text(log[-200_000:], encoding="utf-8")
            kept, listings = crawl_counts(log)
            board = data / "leaderboard.parquet"
            note = f"{files} HTML files; exit {completed.returncode}; leaderboard: {board.is_file()}"
            out += [
                result(SECTION, "mebot run: pages kept", [kept], "pages", note=note),
                result(SECTION, "mebot run: listings skipped", [listings], "pages"),
                result(SECTION, "mebot run: time (cold, isolated data dir)", [seconds / 60], "min"),
            ]
            if board.is_file():
                columns = list(pd.read_parquet(board).columns)
                golden = [c for c in columns if "golden" in c]
                out.append(
                    result(
                        SECTION,
                        "leaderboard golden columns (sample site's file: skipped)",
                        [len(golden)],
                        "columns",
                        target=("==", 0),
                    )
                )
            if completed.returncode != 0:
                out.append(failed(SECTION, "mebot run", log[-800:]))
                return out
            server, url, _ = start_server(config, data, folder)
            try:
                answers, errors, ranks, statuses = ask_visitors(url)
            finally:
                stop_server(server)
        hits = sum(1 for r in ranks if r)
        out += [
            result(
                SECTION,
                "visitor answers: 5xx",
                [errors],
                "answers",
                target=("==", 0),
                note=f"{answers} answers ({len(VISITOR_QUESTIONS)} questions × /api qa, /api extractive, /v1 "
                f"extractive); {statuses}",
            ),
            result(
                SECTION, "visitor questions: retrieval hit@4", [hits / max(len(ranks), 1)], "", note=f"ranks {ranks}"
            ),
        ]
    return out


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="git directory of the blog's repository")
    parser.add_argument("--max-pages", type=int, default=80, help="site.max_pages for the crawl")
    args = parser.parse_args()
    return finish(run(args.mirror, args.max_pages), args.json)


if __name__ == "__main__":
    sys.exit(main())
