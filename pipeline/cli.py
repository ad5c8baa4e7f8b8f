"""`mebot`: run the pipeline, open the Dagster UI, check a settings file."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from mebot.pipeline.deploy.commands import add_commands as add_deploy_commands
from mebot.pipeline.deploy.commands import deployment_home
from mebot.pipeline.deploy.commands import run_command as run_deploy_command
from mebot.pipeline.init_site import add_init_command, run_init
from mebot.pipeline.review import add_owner_commands, run_owner_command
from mebot.pipeline.supervise import is_supervised, run_supervised
from mebot.resources.settings import CONFIG_ENV_VAR, PROJECT_ROOT, Settings, SettingsError, load_settings

DAGSTER_HOME_ENV_VAR = "MEBOT_DAGSTER_HOME"


def _prepare_environment(config: Path) -> None:
    """Point Dagster at the project's instance (dagster.yaml at the repo root) and every process at `config`."""
    from dotenv import load_dotenv

    load_dotenv(PROJECT_ROOT / ".env")
    os.environ[CONFIG_ENV_VAR] = str(config)
    # MEBOT_DEPLOY=celery: that deployment's instance (pipeline/deploy/celery/dagster.yaml, PostgreSQL)
    home = Path(os.environ.get(DAGSTER_HOME_ENV_VAR) or deployment_home() or PROJECT_ROOT).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    # Every process started from here (Dagster's run workers and step processes included) prints the Python stack
    # and the signal's name when native code crashes (SIGILL, SIGSEGV), instead of vanishing.
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    # dagster.yaml's storage paths (.dagster_home/...) are relative, so they resolve inside DAGSTER_HOME.
    os.chdir(home)


def _print_now(line: str) -> None:
    print(line, flush=True)


def cmd_run(config: Path, select: str | None, force: bool = False) -> int:
    """Materialize `select`, each asset partition once its inputs are done, in parallel (pipeline/run_graph.py)."""
    import dagster as dg

    from mebot.pipeline.jobs import DEFAULT_RUN_SELECTION
    from mebot.pipeline.run_graph import DefinitionsRef, SelectionError, run_graph

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    try:
        selection = dg.AssetSelection.from_coercible(select) if select else DEFAULT_RUN_SELECTION
    except dg.DagsterError as exc:
        print(f"mebot: --select {select!r}: {exc}; e.g. 'raw_pages', 'rag_chunks+', 'group:qa'", file=sys.stderr)
        return 2
    max_parallel = load_settings(config).run.max_parallel
    started = time.monotonic()
    print(f"mebot: materializing {select or 'the default selection'} with {config}", flush=True)
    ref = DefinitionsRef("mebot.pipeline.definitions:build_definitions", (str(config),))
    with dg.DagsterInstance.get() as instance:
        try:
            report = run_graph(ref, selection, instance, max_parallel=max_parallel, force=force, out=_print_now)
        except SelectionError as exc:
            print(f"mebot: --select {select!r}: {exc}", file=sys.stderr)
            return 2
    elapsed = time.monotonic() - started
    print(f"\nmebot run {'succeeded' if report.success else 'FAILED'} in {elapsed:.1f}s ({report.runs} run(s))")
    if report.skipped_failed:
        print(f"skipped because an input failed: {len(report.skipped_failed)}; see above")
    print("\n".join(line for outcome in report.outcomes for line in outcome.summary))
    print_leaderboard()
    return 0 if report.success else 1


def print_leaderboard() -> None:
    """The models side by side, when `leaderboard` has been materialized (the end of `make run`)."""
    import pandas as pd

    from mebot.assets.evaluation.reports import golden_markdown, summary_markdown
    from mebot.resources.layout import DataLayout

    path = DataLayout.from_env().asset("leaderboard")
    if path.is_file():
        board = pd.read_parquet(path)
        print(f"\nleaderboard ({path}; every metric with its 95% interval there):\n")
        golden = golden_markdown(board)  # first: facts a person wrote, no judge needed
        if golden:
            print(golden + "\n")
        print(summary_markdown(board))


def cmd_ask(config: Path, question: str, model: str | None, k: int | None, as_json: bool) -> int:
    import json

    from mebot.assets.index.extractive import EXTRACTIVE_MODEL, ExtractiveBot
    from mebot.assets.index.rag import RagAnswer
    from mebot.pipeline.definitions import build_definitions, data_dir_from_env
    from mebot.pipeline.server.models import RAG_MODEL, ModelRegistry

    registry = ModelRegistry(load_settings(config), build_definitions(config).resources, data_dir_from_env())
    named = model
    try:
        registry.refresh()
        model = registry.check(model or registry.default.model)  # none named: serve.default_model, resolved
        if model == RAG_MODEL:
            answer = registry.bot.ask(question, k=k)
        elif model == EXTRACTIVE_MODEL:  # the best sentences quoted with their pages, no LLM
            answer = ExtractiveBot(registry.bot).ask(question, k=k)
        else:
            reply = registry.answer(model, question)
            answer = RagAnswer(question=question, answer=reply.text, sources=[], model=model)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 1
    if named is None:
        print(f"mebot: answered by {model}: {registry.default.reason}", file=sys.stderr)
    if as_json:
        print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return 0
    print(answer.answer)
    if answer.sources:
        print("\nSources:")
    for number, source in enumerate(answer.sources, start=1):
        print(f"  {number}. {source.title} - {source.url} (score {source.score:.3f})")
    return 0


def cmd_smoke(config: Path) -> int:
    """Generate and embed once in a child process; a death names its signal (see pipeline.supervise)."""
    from mebot.pipeline.supervise import run_supervised

    print("mebot smoke: load the bundled GGUF, generate a few tokens, embed one sentence", flush=True)
    code = run_supervised([sys.executable, "-m", "mebot.pipeline.smoke", str(config)], "smoke test: the model process")
    print("mebot smoke: ok" if code == 0 else f"mebot smoke: FAILED (exit code {code})", flush=True)
    return code


def cmd_ui(port: int) -> int:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    print(f"mebot: Dagster UI on http://127.0.0.1:{port}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def cmd_serve(config: Path, host: str | None, port: int | None) -> int:
    from mebot.pipeline.server.app import serve

    return serve(config, host, port)


def cmd_eval_golden(settings, path: Path, golden_path: str, as_json: bool) -> int:
    """Score a bring-your-own answers file (question, model, answer; optional sources) against golden questions;
    print the golden figures per model and the rows that match no golden question."""
    import json

    from mebot.assets.evaluation.external import ExternalAnswersError
    from mebot.assets.evaluation.golden import GoldenFileError, load_golden
    from mebot.assets.evaluation.golden_assets import golden_file_report, read_golden_answers

    if not golden_path.strip():
        print("mebot: --golden: no golden file (eval.golden_path is empty); pass --golden PATH", file=sys.stderr)
        return 2
    try:
        golden = load_golden(settings.resolve_path(golden_path))
        answers = read_golden_answers(path)
        report = golden_file_report(answers, golden, settings.eval, settings.rag.top_k)
    except (GoldenFileError, ExternalAnswersError, ValueError, OSError) as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"file": str(path), **report["json"]}, indent=2))
    else:
        print(report["markdown"])
    return 0


def cmd_eval(settings, path: Path, as_json: bool, out: Path | None) -> int:
    """Score one bring-your-own answers file like external_evaluation does; print its leaderboard."""
    import json

    from mebot.assets.evaluation.external import (
        ExternalAnswersError,
        evaluate_external,
        external_report,
        read_external_answers,
        write_external_outputs,
    )
    from mebot.resources.embeddings import build_embedder

    try:
        answers = read_external_answers(path).assign(source_file=Path(path).name)
        scores, board, pairwise = evaluate_external(answers, settings.eval, build_embedder(settings.models.embedding))
    except (ExternalAnswersError, ValueError, RuntimeError, OSError) as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 1
    written = write_external_outputs(out, scores, board) if out else []
    report = external_report(board, pairwise, settings.eval.tie_epsilon)
    if as_json:
        print(json.dumps({"file": str(path), **report["json"], "written": [str(p) for p in written]}, indent=2))
    else:
        print(report["markdown"])
        for written_path in written:
            print(f"wrote {written_path}")
    return 0


def cmd_check_config(settings: Settings) -> int:
    """Print the settings as validated; warn when the golden file belongs to another site."""
    from mebot.assets.evaluation.golden_site import golden_file_warning

    print(settings.model_dump_json(indent=2))
    golden_warning = golden_file_warning(settings)
    if golden_warning:
        print(f"warning: {golden_warning}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every `mebot` command and its options."""
    parser = argparse.ArgumentParser(prog="mebot", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: mebot.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the asset graph and print a summary")
    run.add_argument(
        "--select",
        default=None,
        help="Dagster asset selection, e.g. 'raw_pages', 'rag_chunks+' or 'group:qa' (default: everything, crawl "
        "to leaderboard); partitioned assets run once per partition",
    )
    run.add_argument(
        "--force", action="store_true", help="also rebuild assets that are fresh (unchanged code and inputs)"
    )
    ui = commands.add_parser("ui", help="start the Dagster UI (dagster dev) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ask = commands.add_parser("ask", help="ask the bot a question; prints the answer and its sources")
    ask.add_argument("question")
    ask.add_argument(
        "--model",
        default=None,
        help="rag, extractive (the best sentences quoted, no LLM), ft-<sweep key> for a fine-tuned model, finetune or "
        "best (default: serve.default_model, the server's default)",
    )
    ask.add_argument("--k", type=int, default=None, help="chunks to retrieve (default: rag.top_k)")
    ask.add_argument("--json", action="store_true", help='print {"answer": ..., "sources": [...]} as JSON')
    commands.add_parser("check-config", help="validate the settings file and print it")
    commands.add_parser("smoke", help="check that the local models run on this machine (generate, embed)")
    add_deploy_commands(commands)  # worker, sweep: pipeline/deploy/commands.py
    add_init_command(commands)  # init URL: pipeline/init_site.py
    add_owner_commands(commands)  # release, review: pipeline/review.py
    serve = commands.add_parser("serve", help="serve the bot: web page, /api, OpenAI-compatible /v1 (uvicorn)")
    serve.add_argument("--host", default=None, help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    evaluate = commands.add_parser(
        "eval", help="score a file of your own answers (.jsonl/.csv/.parquet) and print its leaderboard"
    )
    evaluate.add_argument("file", type=Path, help="answers: question, reference, model, answer (docs/evaluation.md)")
    evaluate.add_argument("--json", action="store_true", help="print the leaderboard and pairwise tables as JSON")
    evaluate.add_argument("--out", type=Path, default=None, help="also write scores and leaderboard files here")
    evaluate.add_argument(
        "--golden",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="score the file (question, model, answer; optional sources) against golden questions instead: "
        "fact accuracy, refusals, retrieval per model (PATH default: eval.golden_path)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    if args.command == "init":  # writes the settings file, so it reads none
        return run_init(args)

    config = (args.config or Path(os.environ.get(CONFIG_ENV_VAR) or PROJECT_ROOT / "mebot.yaml")).resolve()
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 2
    if args.command == "eval" and args.golden is not None:  # no Dagster, no models run
        if args.out is not None:
            print("mebot: eval --golden prints its figures and writes nothing; leave out --out", file=sys.stderr)
            return 2
        return cmd_eval_golden(settings, args.file, args.golden or settings.eval.golden_path, args.json)
    if args.command == "eval":  # no Dagster, no models run: nothing to prepare
        return cmd_eval(settings, args.file, args.json, args.out)
    owned = run_owner_command(args, settings)  # release, review: files under the data folder, no Dagster
    if owned is not None:
        return owned
    if args.command in ("ask", "serve", "run") and not is_supervised():
        # the work happens in a child, so that a death by signal (SIGILL, SIGKILL) is explained
        return run_supervised([sys.executable, "-m", "mebot.pipeline.cli", *raw_argv], f"{args.command}: the process")
    _prepare_environment(config)
    if args.command in ("run", "serve", "sweep"):
        from mebot.resources.chat.base import BUDGET_SCOPE_ENV_VAR, new_budget_scope

        # One budget.max_usd for the whole command: its worker processes inherit the scope and share its ledger.
        os.environ.setdefault(BUDGET_SCOPE_ENV_VAR, new_budget_scope(args.command))
    deployed = run_deploy_command(args, config, settings)
    if deployed is not None:
        return deployed
    if args.command == "check-config":
        return cmd_check_config(settings)
    if args.command == "ui":
        return cmd_ui(args.port)
    if args.command == "smoke":
        return cmd_smoke(config)
    if args.command == "ask":
        return cmd_ask(config, args.question, args.model, args.k, args.json)
    if args.command == "serve":
        return cmd_serve(config, args.host, args.port)
    return cmd_run(config, args.select, args.force)


if __name__ == "__main__":
    sys.exit(main())
