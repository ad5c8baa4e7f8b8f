"""`mebot release` and `mebot review`: the owner's side of the loop.

    mebot release list                     every release, the served one marked, with its gate and golden figures
    mebot release rollback ID              serve an earlier release again (the server reloads within reload_check_s)
    mebot review [--json]                  the review queue: visitors' questions worth a look, most asked first
    mebot review accept ID --fact TEXT [--fact TEXT ...] --source URL
    mebot review unanswerable ID           append the question to the golden file (answerable, or to be declined)
    mebot review dismiss ID                not worth a golden question; it leaves the queue

Nothing here runs Dagster or a model: releases and the queue are files under the data folder, and an accepted
question lands in the golden file, whose new sha256 makes golden_questions and everything after it stale.
"""

from __future__ import annotations

import argparse
import json
import sys

from mebot.resources.layout import DataLayout
from mebot.resources.releases import ReleaseError, list_releases, read_current_id, rollback
from mebot.resources.settings import Settings


def add_owner_commands(commands: argparse._SubParsersAction) -> None:
    """`mebot release ...` and `mebot review ...`."""
    release = commands.add_parser("release", help="list the releases the server can answer with, or roll back")
    actions = release.add_subparsers(dest="release_action", required=True)
    listing = actions.add_parser("list", help="every release, the served one marked with *")
    listing.add_argument("--json", action="store_true", help="print the releases as JSON")
    back = actions.add_parser("rollback", help="serve an earlier release (one that passed golden_no_regression)")
    back.add_argument("release_id", metavar="ID")


def run_owner_command(args: argparse.Namespace, settings: Settings, data: DataLayout | None = None) -> int | None:
    """The exit code of `mebot release`/`mebot review`; None for any other command."""
    data = data or DataLayout.from_env()
    if args.command == "release":
        return cmd_release(args, data)
    return None


# ----------------------------------------------------------------------------------------------- releases


def release_rows(data: DataLayout) -> list[dict]:
    current = read_current_id(data.releases_dir)
    rows = []
    for release in list_releases(data.releases_dir):
        record = release.record
        rows.append(
            {
                "id": release.id,
                "current": release.id == current,
                "created_at": record.get("created_at"),
                "promoted_at": record.get("promoted_at"),
                "passed": release.gate_passed,
                "index_version": record.get("index_version"),
                "chunks": record.get("chunks"),
                "models": record.get("models", []),
                "golden": record.get("golden", {}),
                "failures": record.get("gate", {}).get("failures", []),
            }
        )
    return rows


def _figures(golden: dict) -> str:
    parts = []
    for model, figures in sorted(golden.items()):
        fact, refusal = figures.get("golden_fact_accuracy"), figures.get("golden_refusal_accuracy")
        text = "/".join("-" if v is None else f"{v:.2f}" for v in (fact, refusal))
        parts.append(f"{model} {text}")
    return ", ".join(parts) or "no golden figures"


def cmd_release(args: argparse.Namespace, data: DataLayout) -> int:
    if args.release_action == "rollback":
        try:
            release = rollback(data.releases_dir, args.release_id)
        except ReleaseError as exc:
            print(f"mebot: {exc}", file=sys.stderr)
            return 1
        print(
            f"mebot: now serving release {release.id} (index {release.record.get('index_version')}); a running "
            "server switches within serve.reload_check_s"
        )
        return 0
    rows = release_rows(data)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no releases yet in {data.releases_dir}: `mebot run` makes the first one")
        return 0
    print("  id                      created                    gate     index version        golden (fact/refusal)")
    for row in rows:
        mark = "*" if row["current"] else " "
        gate = "passed" if row["passed"] else "REFUSED"
        print(
            f"{mark} {row['id']}  {row['created_at']}  {gate:<7}  {row['index_version']:<19}  {_figures(row['golden'])}"
        )
        for failure in row["failures"]:
            print(f"      {failure}")
    return 0
