"""The `finetune` group's assets and checks."""

import dagster as dg

from mebot.assets.finetune.dataset import finetune_dataset, training_file_valid
from mebot.assets.finetune.training import finetuned_models_asset
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """`finetuned_models` has one partition per point of `settings.finetune.sweep`."""
    return [finetune_dataset, training_file_valid, finetuned_models_asset(settings)]
