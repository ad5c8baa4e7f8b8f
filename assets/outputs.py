"""What every asset returns: its value with a data version from its content, and metadata (no pipeline logic).

A data version computed from the content (not from the run) is what lets a re-materialization that produced the
same data leave everything downstream fresh.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import dagster as dg
import pandas as pd

from mebot.resources.parquet_io import content_version

T = TypeVar("T")


def versioned_output(value: T, version: str, metadata: Mapping[str, Any]) -> dg.Output[T]:
    """`value` with the data version `version` and the materialization's metadata."""
    return dg.Output(value, data_version=dg.DataVersion(version), metadata=dict(metadata))


def content_output(
    frame: pd.DataFrame, metadata: Mapping[str, Any], *, version_of: Sequence[str] | None = None
) -> dg.Output[pd.DataFrame]:
    """`frame` with a data version hashed from the columns `version_of` (None: every column, missing values
    as -1) and the materialization's metadata."""
    if version_of is None:
        version = content_version(frame.fillna(-1), list(frame.columns))
    else:
        version = content_version(frame, list(version_of))
    return versioned_output(frame, version, metadata)


def mean_metadata(frame: pd.DataFrame, columns: list[str]) -> dict[str, dg.MetadataValue]:
    """`<column>_mean` per column that has a value (a mean of nothing is left out, not shown as 0), as numeric
    metadata the UI plots across materializations."""
    means = {f"{c}_mean": frame[c].mean() for c in columns}
    return {name: dg.MetadataValue.float(round(float(v), 4)) for name, v in means.items() if pd.notna(v)}


def md_image(png: bytes, alt: str) -> str:
    """A PNG inlined as a markdown image (the UI shows it in the materialization's metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
