"""`mebot`: run the pipeline, open the Dagster UI, check a settings file."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from pipeline.settings import CONFIG_ENV_VAR, PROJECT_ROOT, SettingsError, load_settings

DAGSTER_HOME_ENV_VAR = "MEBOT_DAGSTER_HOME"


def _prepare_environment(config: Path) -> None:
    """Point Dagster at the project's instance (dagster.yaml at the repo root) and every process at `config`."""
    from dotenv import load_dotenv

    load_dotenv(PROJECT_ROOT / ".env")
    os.environ[CONFIG_ENV_VAR] = str(config)
    home = Path(os.environ.get(DAGSTER_HOME_ENV_VAR) or PROJECT_ROOT).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    # dagster.yaml's storage paths (.dagster_home/...) are relative, so they resolve inside DAGSTER_HOME.
    os.chdir(home)


def _is_short_scalar(value: object) -> bool:
    if isinstance(value, bool | int | float):
        return True
    if isinstance(value, dict):
        return len(str(value)) <= 120
    return isinstance(value, str) and len(value) <= 40 and "\n" not in value


def _summary_lines(result) -> list[str]:
    lines = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata = materialization.metadata
        rows = metadata.get("dagster/row_count")
        partition = f" [{materialization.partition}]" if materialization.partition else ""
        extras = [
            f"{key}={round(value.value, 3) if isinstance(value.value, float) else value.value}"
            for key, value in metadata.items()
            if not key.startswith("dagster/") and key != "path" and _is_short_scalar(value.value)
        ]
        row_text = f"{rows.value} rows" if rows is not None else ""
        lines.append(f"  {materialization.asset_key.to_user_string()}{partition}: {row_text}  {'  '.join(extras)}")
    for evaluation in result.get_asset_check_evaluations():
        status = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        lines.append(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {status}")
    return lines


def user_error_message(error) -> str:
    """The innermost error of a failed step: the user's exception, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def cmd_run(config: Path, select: str | None) -> int:
    import dagster as dg

    from pipeline.definitions import build_definitions
    from pipeline.jobs import DEFAULT_RUN_SELECTION

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    defs = build_definitions(config)
    graph = defs.resolve_asset_graph()
    selection = dg.AssetSelection.from_coercible(select) if select else DEFAULT_RUN_SELECTION
    keys = selection.resolve(graph)
    partitioned = sorted(k for k in keys if graph.get(k).partitions_def is not None)
    plain = [k for k in keys if k not in partitioned]
    # One run for the unpartitioned assets, then one per partition (e.g. per sweep point) of the others.
    runs: list[tuple[list, str | None]] = [(plain, None)] if plain else []
    if partitioned:
        partition_keys = graph.get(partitioned[0]).partitions_def.get_partition_keys()
        runs += [(partitioned, key) for key in partition_keys]
    started = time.monotonic()
    print(f"mebot: materializing {select or 'the ingest and index groups'} with {config}", flush=True)
    success, lines = True, []
    for run_keys, partition in runs:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            resources=defs.resources,
            instance=dg.DagsterInstance.get(),
            selection=dg.AssetSelection.assets(*run_keys),
            partition_key=partition,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            tags={"mebot/command": "run"},
        )
        lines += _summary_lines(result)
        if not result.success:
            success = False
            for event in result.all_events:
                if event.is_failure and event.step_failure_data:
                    message = user_error_message(event.step_failure_data.error)
                    print(f"\n{event.step_key}: {message}", file=sys.stderr)
    elapsed = time.monotonic() - started
    print(f"\nmebot run {'succeeded' if success else 'FAILED'} in {elapsed:.1f}s ({len(runs)} run(s))")
    print("\n".join(lines))
    return 0 if success else 1


def cmd_ask(config: Path, question: str, model: str, k: int | None, as_json: bool) -> int:
    import json

    from assets.rag import RagAnswer
    from pipeline.definitions import build_definitions, data_dir_from_env
    from pipeline.server.models import RAG_MODEL, ModelRegistry

    registry = ModelRegistry(load_settings(config), build_definitions(config).resources, data_dir_from_env())
    try:
        registry.refresh()
        registry.check(model)
        if model == RAG_MODEL:
            answer = registry.bot.ask(question, k=k)
        else:
            reply = registry.answer(model, question)
            answer = RagAnswer(question=question, answer=reply.text, sources=[], model=model)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return 0
    print(answer.answer)
    if answer.sources:
        print("\nSources:")
    for number, source in enumerate(answer.sources, start=1):
        print(f"  {number}. {source.title} - {source.url} (score {source.score:.3f})")
    return 0


def cmd_ui(port: int) -> int:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    print(f"mebot: Dagster UI on http://127.0.0.1:{port}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def cmd_serve(config: Path, host: str | None, port: int | None) -> int:
    from pipeline.server.app import serve

    return serve(config, host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mebot", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="settings file (default: mebot.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the asset graph and print a summary")
    run.add_argument(
        "--select",
        default=None,
        help="Dagster asset selection, e.g. 'raw_pages', 'rag_chunks+' or '*' (default: crawl to vector index); "
        "partitioned assets run once per partition",
    )
    ui = commands.add_parser("ui", help="start the Dagster UI (dagster dev) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ask = commands.add_parser("ask", help="ask the bot a question; prints the answer and its sources")
    ask.add_argument("question")
    ask.add_argument("--model", default="rag", help="rag, or ft-<sweep key> for a fine-tuned model")
    ask.add_argument("--k", type=int, default=None, help="chunks to retrieve (default: rag.top_k)")
    ask.add_argument("--json", action="store_true", help='print {"answer": ..., "sources": [...]} as JSON')
    commands.add_parser("check-config", help="validate the settings file and print it")
    serve = commands.add_parser("serve", help="serve the bot: web page, /api, OpenAI-compatible /v1 (uvicorn)")
    serve.add_argument("--host", default=None, help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    args = parser.parse_args(argv)

    config = (args.config or Path(os.environ.get(CONFIG_ENV_VAR) or PROJECT_ROOT / "mebot.yaml")).resolve()
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 2
    _prepare_environment(config)
    if args.command == "check-config":
        print(settings.model_dump_json(indent=2))
        return 0
    if args.command == "ui":
        return cmd_ui(args.port)
    if args.command == "ask":
        return cmd_ask(config, args.question, args.model, args.k, args.json)
    if args.command == "serve":
        return cmd_serve(config, args.host, args.port)
    return cmd_run(config, args.select)


if __name__ == "__main__":
    sys.exit(main())
