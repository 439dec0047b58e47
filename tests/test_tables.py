"""The table contract: every schema round-trips through parquet and CSV, and each kind of violation is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukoflow import tables

SAMPLES = {"str": ["a.jpg", "", "LY;PNN"], "int": [0, -1, 7], "float": [0.5, np.nan, 1e-9], "bool": [True, False, True]}
SCHEMAS = [*tables.SCHEMAS.values(), tables.logits_schema(3)]


def _frame(schema: tables.Schema) -> pd.DataFrame:
    return tables.schema_frame({c.name: SAMPLES[c.dtype] for c in schema.columns}, schema)


def _first(schema: tables.Schema, dtype: str) -> tables.Column | None:
    return next((column for column in schema.columns if column.dtype == dtype), None)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_every_schema_round_trips(schema, suffix, tmp_path):
    frame = _frame(schema)
    path = tmp_path / f"{schema.name}{suffix}"
    tables.write_table(frame, path, schema)
    back = tables.read_table(path, schema)
    assert list(back.columns) == schema.column_names
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)  # NaN stays NaN, "" stays ""
    assert [str(back[c].dtype) for c in schema.column_names] == [str(frame[c].dtype) for c in schema.column_names]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_an_empty_table_round_trips(schema, tmp_path):
    tables.write_table(tables.empty_frame(schema), tmp_path / "empty.parquet", schema)
    assert tables.read_table(tmp_path / "empty.parquet", schema).empty


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_a_missing_column_is_refused_by_name(schema, tmp_path):
    frame = _frame(schema).drop(columns=schema.column_names[0])
    with pytest.raises(tables.SchemaError, match=rf"missing \['{schema.column_names[0]}'\]"):
        tables.write_table(frame, tmp_path / "t.parquet", schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_an_unexpected_column_and_a_wrong_order_are_refused(schema):
    frame = _frame(schema)
    with pytest.raises(tables.SchemaError, match=r"unexpected \['surplus'\]"):
        tables.validate(frame.assign(surplus=1), schema)
    if len(schema.columns) > 1:
        with pytest.raises(tables.SchemaError, match="expected order"):
            tables.validate(frame[list(reversed(schema.column_names))], schema)


@pytest.mark.parametrize("dtype", ["str", "int", "float", "bool"])
def test_a_wrong_dtype_is_refused_naming_the_column(dtype):
    schema = next(s for s in SCHEMAS if _first(s, dtype))
    column = _first(schema, dtype).name
    wrong = {"str": [1, 2, 3], "int": ["x", "y", "z"], "float": ["x", "y", "z"], "bool": [1.5, 2.5, 3.5]}[dtype]
    frame = _frame(schema).assign(**{column: wrong})
    with pytest.raises(tables.SchemaError, match=rf"column '{column}' has dtype .* schema says {dtype}"):
        tables.validate(frame, schema, "file.parquet")


@pytest.mark.parametrize("dtype", ["str", "int", "bool"])
def test_missing_values_are_refused_outside_float_columns(dtype, tmp_path):
    schema = next(s for s in SCHEMAS if _first(s, dtype))
    column = _first(schema, dtype).name
    frame = _frame(schema)
    nullable = {"str": "str", "int": "Int64", "bool": "boolean"}[dtype]
    frame[column] = frame[column].astype(nullable)
    frame.loc[1, column] = None
    with pytest.raises(tables.SchemaError, match=rf"'{column}' \({dtype}\) has missing values, first at rows \[1\]"):
        tables.write_table(frame, tmp_path / "t.parquet", schema)


def test_float_columns_may_hold_nan():
    schema = next(s for s in SCHEMAS if _first(s, "float"))
    frame = _frame(schema)
    assert frame[_first(schema, "float").name].isna().any()
    tables.validate(frame, schema)


def test_a_parquet_written_outside_the_contract_is_refused_on_read(tmp_path):
    schema = tables.LEDGER
    _frame(schema).drop(columns="detail").to_parquet(tmp_path / "ledger.parquet")
    with pytest.raises(tables.SchemaError, match=r"ledger \(.*ledger.parquet\).*missing \['detail'\]"):
        tables.read_table(tmp_path / "ledger.parquet", schema)


def test_a_csv_with_a_non_number_in_an_int_column_is_refused_on_read(tmp_path):
    schema = tables.FOLDS
    column = _first(schema, "int").name
    _frame(schema).astype({column: str}).assign(**{column: ["1", "two", "3"]}).to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(ValueError):
        tables.read_table(tmp_path / "f.csv", schema)


def test_cast_orders_and_types_the_columns_and_names_a_missing_one():
    schema = tables.FOLDS
    loose = _frame(schema).astype(object)[list(reversed(schema.column_names))].assign(extra=0)
    typed = tables.cast(loose, schema)
    tables.validate(typed, schema)
    with pytest.raises(tables.SchemaError, match=rf"missing columns \['{schema.column_names[0]}'\]"):
        tables.cast(loose.drop(columns=schema.column_names[0]), schema)
