"""Parquet storage for every DataFrame asset: `data/<asset>.parquet`, partitions `data/<asset>/<key>.parquet`.

Writes are atomic (`files.atomic_output`: temp file in the same folder, then rename), so a crash mid-write
leaves the previous version readable and never a half-written file under the real name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
from upath import UPath

from mebot.resources.files import atomic_output

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 80


def markdown_preview(df: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """The first rows as a markdown table, long cells shortened so the UI stays readable."""
    head = df.head(rows).copy()
    for column in head.columns:
        head[column] = head[column].map(_short_cell)
    return head.to_markdown(index=False)


def _short_cell(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"


def content_version(frame: pd.DataFrame, columns: list[str]) -> str:
    """A data version from content only, so a recrawl that finds nothing new leaves downstream fresh."""
    digest = hashlib.sha256()
    for row in frame[columns].itertuples(index=False):
        digest.update("\x1f".join(map(str, row)).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def table_schema(df: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(str(name), str(dtype)) for name, dtype in df.dtypes.items()])


def write_parquet_atomically(df: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as partial:
        df.to_parquet(partial, index=False)


class ParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                "the Parquet IO manager stores pandas DataFrames"
            )
        write_parquet_atomically(obj, Path(path))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return pd.read_parquet(Path(path))

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, dg.MetadataValue]:
        return {
            "dagster/row_count": dg.MetadataValue.int(len(obj)),
            "dagster/column_schema": dg.MetadataValue.table_schema(table_schema(obj)),
            "preview": dg.MetadataValue.md(markdown_preview(obj)),
        }


class ParquetIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Stores DataFrame assets as Parquet files under `base_dir` (the project's `data/` by default)."""

    base_dir: str

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetIOManager:
        return ParquetIOManager(base_path=UPath(self.base_dir))
