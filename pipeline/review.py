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
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mebot.resources.clock import utc_now
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings

if TYPE_CHECKING:  # the rest is imported where used: `mebot` starts fast for every other command
    import pandas as pd


def add_owner_commands(commands: argparse._SubParsersAction) -> None:
    """`mebot release ...` and `mebot review ...`."""
    release = commands.add_parser("release", help="list the releases the server can answer with, or roll back")
    actions = release.add_subparsers(dest="release_action", required=True)
    listing = actions.add_parser("list", help="every release, the served one marked with *")
    listing.add_argument("--json", action="store_true", help="print the releases as JSON")
    back = actions.add_parser("rollback", help="serve an earlier release (one that passed golden_no_regression)")
    back.add_argument("release_id", metavar="ID")
    add_review_parser(commands)


def add_review_parser(commands: argparse._SubParsersAction) -> None:
    review = commands.add_parser("review", help="the visitors' questions worth a look; turn them into golden ones")
    review.add_argument("--json", action="store_true", help="print the queue as JSON (each item's id and question)")
    actions = review.add_subparsers(dest="review_action")
    accept = actions.add_parser("accept", help="append the question to the golden file with its facts and source")
    accept.add_argument("item_id", metavar="ID")
    accept.add_argument("--fact", action="append", required=True, help="a fact a right answer states (repeatable)")
    accept.add_argument("--source", required=True, help="the page that states it: /path/ or an http(s) URL")
    accept.add_argument("--golden-id", default=None, help="the golden question's id (default: made from the question)")
    unanswerable = actions.add_parser("unanswerable", help="append it to the golden file as one the bot must decline")
    unanswerable.add_argument("item_id", metavar="ID")
    unanswerable.add_argument("--golden-id", default=None, help="the golden question's id")
    dismiss = actions.add_parser("dismiss", help="drop it from the queue: not worth a golden question")
    dismiss.add_argument("item_id", metavar="ID")


def run_owner_command(args: argparse.Namespace, settings: Settings, data: DataLayout | None = None) -> int | None:
    """The exit code of `mebot release`/`mebot review`; None for any other command."""
    data = data or DataLayout.from_env()
    if args.command == "release":
        return cmd_release(args, data)
    if args.command == "review":
        return cmd_review(args, settings, data)
    return None


# ----------------------------------------------------------------------------------------------- releases


def release_rows(data: DataLayout) -> list[dict]:
    from mebot.resources.releases import list_releases, read_current_id

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
    from mebot.resources.releases import ReleaseError, rollback

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
    print(f"  {'id':<30}  {'created':<25}  {'gate':<7}  golden fact/refusal accuracy  (* = served)")
    for row in rows:
        mark = "*" if row["current"] else " "
        gate = "passed" if row["passed"] else "REFUSED"
        print(f"{mark} {row['id']:<30}  {row['created_at'] or '':<25}  {gate:<7}  {_figures(row['golden'])}")
        for failure in row["failures"]:
            print(f"      {failure}")
    return 0


# ------------------------------------------------------------------------------------------------- review


class ReviewError(ValueError):
    """A review command that cannot be carried out; the message names the item or file and what to do."""


def open_queue(data: DataLayout) -> pd.DataFrame:
    """The materialized review_queue without the items already decided (data/visitors/review.json)."""
    import pandas as pd

    from mebot.assets.owner.review_queue import decided_wordings, read_decisions

    path = data.asset("review_queue")
    if not path.is_file():
        raise ReviewError(
            "no review queue yet: it is built from the visitor log by the review_queue asset (`mebot run --select "
            "group:visitors`, or the visitor_log sensor under `mebot ui`)"
        )
    queue = pd.read_parquet(path)
    decided = decided_wordings(read_decisions(data.review_decisions))
    keep = [not decided & set(json.loads(w)) for w in queue["wordings_json"]]
    return queue[keep].reset_index(drop=True)


def queue_item(data: DataLayout, item_id: str) -> pd.Series:
    queue = open_queue(data)
    found = queue[queue["id"] == item_id]
    if found.empty:
        known = ", ".join(queue["id"].head(10)) or "none: the queue is empty"
        raise ReviewError(f"no review item {item_id!r} in the queue (decided already, or never there); items: {known}")
    return found.iloc[0]


def queue_json(queue: pd.DataFrame) -> list[dict]:
    from mebot.assets.owner.review_queue import REASONS

    return [
        {
            "id": row["id"],
            "question": row["question"],
            "asked": int(row["asked"]),
            "reasons": [r for r in REASONS if row[r]],
            **{reason: int(row[reason]) for reason in REASONS},
            "wordings": json.loads(row["wordings_json"]),
            "models": json.loads(row["models_json"]),
            "answer": row["answer"],
            "comments": json.loads(row["comments_json"]),
            "last_asked": row["last_asked"],
        }
        for row in queue.to_dict("records")
    ]


def print_queue(queue: pd.DataFrame, as_json: bool) -> None:
    if as_json:
        print(json.dumps(queue_json(queue), indent=2, ensure_ascii=False))
        return
    if queue.empty:
        print("the review queue is empty: no declined, thumbs-down, ungrounded or weakly supported questions")
        return
    print(f"{len(queue)} questions worth a look, most asked first:\n")
    for row in queue.to_dict("records"):
        print(f"  {row['id']}  asked {row['asked']}x  [{row['reasons']}]  {row['question']}")
    print("\nmebot review accept ID --fact TEXT --source URL | mebot review unanswerable ID | mebot review dismiss ID")


def record_decision(data: DataLayout, item: pd.Series, decision: str, golden_id: str | None = None) -> None:
    from mebot.assets.owner.review_queue import read_decisions
    from mebot.resources.files import write_json_atomically

    decisions = read_decisions(data.review_decisions)
    decisions.setdefault("decisions", []).append(
        {
            "item": item["id"],
            "question": item["question"],
            "wordings": json.loads(item["wordings_json"]),
            "decision": decision,
            "golden_id": golden_id,
            "at": utc_now(),
        }
    )
    write_json_atomically(data.review_decisions, decisions)


def cmd_review(args: argparse.Namespace, settings: Settings, data: DataLayout) -> int:
    from mebot.assets.evaluation.golden import GoldenFileError

    try:
        action = args.review_action
        if action is None:
            print_queue(open_queue(data), args.json)
            return 0
        item = queue_item(data, args.item_id)
        if action == "dismiss":
            record_decision(data, item, "dismissed")
            print(f"mebot: dismissed {item['id']} ({item['question']})")
            return 0
        path = golden_path(settings)
        entry = golden_entry(item["question"], args.golden_id, path, args.fact if action == "accept" else None,
                             args.source if action == "accept" else None)  # fmt: skip
        append_golden_question(path, entry)
        record_decision(data, item, "accepted" if action == "accept" else "unanswerable", entry["id"])
    except (ReviewError, GoldenFileError) as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        return 1
    print(
        f"mebot: golden question {entry['id']!r} added to {path}; golden_questions and the golden assets after it are "
        "now stale: `mebot run` answers and scores it, and every later release must pass it"
    )
    return 0


# ------------------------------------------------------------------------------------------ the golden file


def golden_path(settings: Settings) -> Path:
    if not settings.eval.golden_path.strip():
        raise ReviewError("eval.golden_path is empty: point it at your golden file (e.g. golden/my_site.yaml)")
    return settings.resolve_path(settings.eval.golden_path)


def golden_id_for(question: str, taken: set[str]) -> str:
    """A short id from the question's words ("what-is-your-cat-called"), made unique with -2, -3, ..."""
    from mebot.assets.evaluation.golden import normalise_question

    words = re.findall(r"[a-z0-9]+", normalise_question(question))[:6] or ["visitor-question"]
    base = "-".join(words)[:48].strip("-") or "visitor-question"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def golden_entry(
    question: str, golden_id: str | None, path: Path, facts: list[str] | None, source: str | None
) -> dict[str, Any]:
    """The golden question to append: answerable with `facts` and `source`, or unanswerable when facts is None."""
    from mebot.assets.evaluation.golden import load_golden

    taken = {q.id for q in load_golden(path).questions} if path.is_file() else set()
    if golden_id is not None and golden_id in taken:
        raise ReviewError(f"{path} already has a golden question {golden_id!r}; pick another --golden-id")
    entry: dict[str, Any] = {"id": golden_id or golden_id_for(question, taken), "question": question}
    if facts is None:
        entry["unanswerable"] = True
    else:
        entry["source"] = source
        entry["facts"] = {"any_of": [fact.strip() for fact in facts]}
    return entry


def _scalar(text: str) -> str:
    """`text` as a YAML scalar that PyYAML (the golden loader) reads back as the same text: plain where it does,
    else double-quoted (a JSON string is a valid YAML double-quoted scalar)."""
    import yaml

    try:
        if "\n" not in text and "#" not in text and yaml.safe_load(text) == text:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(text, ensure_ascii=False)


def entry_lines(entry: dict[str, Any], dash_column: int, key_column: int) -> list[str]:
    """The entry in the golden file's own style: `- id:` at the items' indentation, facts as a flow mapping of
    double-quoted facts (so that "yes" or "1:30" stay text)."""
    pad = " " * key_column
    lines = [f"{' ' * dash_column}-{' ' * (key_column - dash_column - 1)}id: {entry['id']}"]
    lines.append(f"{pad}question: {_scalar(entry['question'])}")
    if entry.get("unanswerable"):
        lines.append(f"{pad}unanswerable: true")
    else:
        lines.append(f"{pad}source: {_scalar(entry['source'])}")
        facts = ", ".join(json.dumps(fact, ensure_ascii=False) for fact in entry["facts"]["any_of"])
        lines.append(f"{pad}facts: {{any_of: [{facts}]}}")
    return lines


def _last_node_end(node) -> int:
    """The line (0-based) where the last thing inside `node` ends: block collections end at the next token (after
    comments and blank lines), so descend to the last scalar or flow collection, whose end is exact."""
    import yaml

    while isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        node = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    end = node.end_mark
    return end.line - 1 if end.column == 0 else end.line


def append_golden_question(path: Path, entry: dict[str, Any]) -> None:
    """Append `entry` after the last question of the golden file, as text: every existing line (comments, order,
    quoting) stays exactly as the owner wrote it. Validated by the golden loader before it replaces the file
    (atomically); GoldenFileError names what is wrong, and the file is left as it was."""
    import yaml

    from mebot.assets.evaluation.golden import GoldenFileError, load_golden
    from mebot.resources.files import atomic_output

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    load_golden(path) if text else None  # an invalid file is reported as it is, before anything is added
    lines = text.splitlines()
    if not text:
        lines, new = ["questions:"], entry_lines(entry, 2, 4)
        at = 1
    else:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        questions = next(value for key, value in root.value if key.value == "questions")
        if questions.flow_style:
            raise GoldenFileError(f"{path}: `questions` is a [flow] list; write it as a block list (- id: ...)")
        first = questions.value[0]
        key_column = first.start_mark.column
        dash_column = (
            questions.start_mark.column if questions.start_mark.line == first.start_mark.line else key_column - 2
        )
        at = _last_node_end(questions) + 1
        new = entry_lines(entry, min(dash_column, key_column - 2), key_column)
    new_text = "\n".join([*lines[:at], *new, *lines[at:]]) + "\n"
    with atomic_output(path) as partial:
        partial.write_text(new_text, encoding="utf-8")
        golden = load_golden(partial)  # as the golden assets will read it: the file is replaced only if valid
        if golden.questions[-1].id != entry["id"]:
            raise GoldenFileError(f"{path}: the new question did not land last in `questions`")
