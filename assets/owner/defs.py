"""The owner's loop: `release` (with its blocking check golden_no_regression)."""

import dagster as dg

from mebot.assets.owner.release import release
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    return [release]
