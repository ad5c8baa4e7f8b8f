import dagster as dg
import pandas as pd
import pytest

from mebot.resources.parquet_io import (
    ParquetIOManagerFactory,
    content_version,
    markdown_preview,
    write_parquet_atomically,
)


@dg.asset
def letters() -> pd.DataFrame:
    return pd.DataFrame({"letter": ["a", "b", "c"], "n": [1, 2, 3]})


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["e4-b1", "e2-b8"]))
def per_point(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"point": [context.partition_key]})


@dg.asset
def doubled(letters: pd.DataFrame) -> pd.DataFrame:
    return letters.assign(n=letters["n"] * 2)


def _io(tmp_path):
    return {"io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data"))}


def test_asset_is_written_to_data_asset_parquet_and_read_back_downstream(tmp_path):
    result = dg.materialize([letters, doubled], resources=_io(tmp_path))
    assert result.success
    assert pd.read_parquet(tmp_path / "data" / "letters.parquet")["letter"].tolist() == ["a", "b", "c"]
    assert pd.read_parquet(tmp_path / "data" / "doubled.parquet")["n"].tolist() == [2, 4, 6]


def test_partitions_are_written_to_data_asset_partition_parquet(tmp_path):
    for key in ("e4-b1", "e2-b8"):
        assert dg.materialize([per_point], resources=_io(tmp_path), partition_key=key).success
    assert pd.read_parquet(tmp_path / "data" / "per_point" / "e2-b8.parquet")["point"].tolist() == ["e2-b8"]
    assert (tmp_path / "data" / "per_point" / "e4-b1.parquet").is_file()


def test_metadata_has_path_rows_schema_and_markdown_preview(tmp_path):
    result = dg.materialize([letters], resources=_io(tmp_path))
    metadata = result.asset_materializations_for_node("letters")[0].metadata
    assert metadata["path"].value.endswith("data/letters.parquet")
    assert metadata["dagster/row_count"].value == 3
    assert [c.name for c in metadata["dagster/column_schema"].value.columns] == ["letter", "n"]
    preview = metadata["preview"].value
    assert "| letter" in preview and "| a " in preview


def test_a_crash_mid_write_leaves_the_previous_version_readable(tmp_path, monkeypatch):
    assert dg.materialize([letters], resources=_io(tmp_path)).success
    target = tmp_path / "data" / "letters.parquet"
    before = target.read_bytes()

    def crash_after_partial_write(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash_after_partial_write)
    result = dg.materialize([letters], resources=_io(tmp_path), raise_on_error=False)
    assert not result.success
    assert target.read_bytes() == before
    monkeypatch.undo()
    assert pd.read_parquet(target)["letter"].tolist() == ["a", "b", "c"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["letters.parquet"]


def test_write_parquet_atomically_replaces_the_file(tmp_path):
    target = tmp_path / "x" / "t.parquet"
    write_parquet_atomically(pd.DataFrame({"a": [1]}), target)
    write_parquet_atomically(pd.DataFrame({"a": [2]}), target)
    assert pd.read_parquet(target)["a"].tolist() == [2]


def test_non_dataframe_output_is_a_clear_error(tmp_path):
    @dg.asset
    def not_a_frame() -> dict:
        return {"a": 1}

    with pytest.raises(TypeError, match="not_a_frame returned dict"):
        dg.materialize([not_a_frame], resources=_io(tmp_path))


@pytest.mark.parametrize(
    ("cell", "shown"),
    [("short", "short"), ("x" * 200, "x" * 79 + "…"), ("two\nlines  here", "two lines here")],
)
def test_markdown_preview_shortens_and_flattens_cells(cell, shown):
    assert f"| {shown}" in markdown_preview(pd.DataFrame({"c": [cell]}))


def test_content_version_depends_on_content_only():
    a = pd.DataFrame({"u": ["x", "y"], "fetched_at": ["t1", "t2"]})
    b = a.assign(fetched_at=["t3", "t4"])
    assert content_version(a, ["u"]) == content_version(b, ["u"])
    assert content_version(a, ["u"]) != content_version(a.assign(u=["x", "z"]), ["u"])
