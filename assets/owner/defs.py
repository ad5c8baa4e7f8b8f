"""The owner's loop: `release` (with its blocking check golden_no_regression), `visitor_questions` (daily
partitions of the visitor log) and `review_queue`."""

import dagster as dg

from mebot.assets.owner.release import release
from mebot.assets.owner.review_queue import review_queue
from mebot.assets.owner.visitor import visitor_questions
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    return [release, visitor_questions, review_queue]
