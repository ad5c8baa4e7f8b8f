"""The server's side of the visitor log: each answered question logged with a random id (returned to the client
as `id`), and `POST /api/feedback` {"id", "rating": "up"|"down", "comment"} for the page's 👍/👎.

No address, user agent or header reaches the log (resources/visitor_log.py keeps no field for one). Feedback is
rate-limited like every request (the server's token bucket) and size-limited here; an unknown id is a 404. A log
that cannot be written never fails the answer: it is reported in the server's log and the reply has no id.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mebot.assets.owner.visitor import answer_flags
from mebot.pipeline.server.models import Reply
from mebot.pipeline.server.protocol import ApiError, check_text, read_json
from mebot.pipeline.server.release import served_release_id
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings
from mebot.resources.visitor_log import RATINGS, LoggedAnswer, VisitorLog

log = logging.getLogger("mebot.serve")

MAX_COMMENT_CHARS = 1000
MAX_FEEDBACK_BYTES = 8192
_ID = re.compile(r"^(chatcmpl-)?[0-9a-f]{24,32}$")


class VisitorRecorder:
    """Logs answers and feedback for one server (nothing when serve.log.enabled is false)."""

    def __init__(self, settings: Settings, data_dir: Path):
        self.data_dir = Path(data_dir)
        layout = DataLayout(self.data_dir)
        self.log = VisitorLog(layout.visitor_log, settings.serve.log.keep_days) if settings.serve.log.enabled else None

    def _record(self, channel: str, question: str, reply: Reply, answer_id: str | None) -> str | None:
        flags = answer_flags(question, reply.text, [s.text or s.snippet for s in reply.sources])
        entry = LoggedAnswer(
            channel=channel,
            question=question,
            model=reply.model,
            answer=reply.text,
            source_urls=[s.url for s in reply.sources],
            latency_s=reply.latency_s,
            declined=flags.declined,
            grounded=flags.grounded,
            weak_evidence=flags.weak_evidence,
            release_id=served_release_id(self.data_dir),
        )
        return self.log.log(entry, answer_id=answer_id)

    async def record(self, channel: str, question: str, reply: Reply, answer_id: str | None = None) -> str | None:
        """The id the answer was logged under; None when the log is off or could not be written."""
        if self.log is None:
            return None
        try:
            return await asyncio.to_thread(self._record, channel, question, reply, answer_id)
        except Exception:  # noqa: BLE001 - the visitor still gets the answer
            log.exception("the visitor log could not be written")
            return None

    async def feedback(self, request: Request) -> Response:
        """POST /api/feedback: 200 {"id", "rating"}; 400 for a bad field, 404 for an id never logged, 413 too big."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FEEDBACK_BYTES:
            raise ApiError(413, f"feedback is at most {MAX_FEEDBACK_BYTES} bytes", "too_large")
        body = await read_json(request)
        answer_id, rating, comment = body.get("id"), body.get("rating"), body.get("comment", "")
        if not isinstance(answer_id, str) or not _ID.match(answer_id):
            raise ApiError(400, "'id' must be the id an answer came with", "bad_request")
        if rating not in RATINGS:
            raise ApiError(400, f"'rating' must be one of {', '.join(map(repr, RATINGS))}", "bad_request")
        if comment is None:
            comment = ""
        if not isinstance(comment, str):
            raise ApiError(400, "'comment' must be text", "bad_request")
        check_text(comment, "the comment")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ApiError(413, f"the comment is {len(comment)} characters long; the limit is {MAX_COMMENT_CHARS}",
                           "comment_too_long")  # fmt: skip
        if self.log is None:
            raise ApiError(404, "no answer with that id (the visitor log is off)", "not_found")
        known = await asyncio.to_thread(self.log.add_feedback, answer_id, rating, comment.strip())
        if not known:
            raise ApiError(404, "no answer with that id", "not_found")
        return JSONResponse({"id": answer_id, "rating": rating})
