"""Read back anything `cage annotate` writes: Parquet file or dataset folder, JSONL, CSV; on
a local path or a pyarrow filesystem URI (``s3://bucket/out/``, as ``-o`` takes)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ...schema import CSV_SCHEMA, EMBEDDING_TYPE, SCHEMA
from .store import UriPath
from .write import META_KEY, OutputError, arrow_source, output_location, read_footer


def location(path: str | Path | UriPath) -> Path | UriPath:
    """An output to read: a local path, or a :class:`UriPath` for a URI (bad URI:
    OutputError)."""
    return path if isinstance(path, UriPath) else output_location(str(path), "open")


def read_annotations(path: str | Path | UriPath) -> pa.Table:
    """All rows of an annotation output as a table with :data:`cage_cli.SCHEMA`."""
    p = location(path)
    if not p.exists():
        raise OutputError(f"{p}: no such file or folder")
    try:
        if p.is_dir():
            parts = sorted(p.glob("*.parquet"))
            if not parts:
                raise OutputError(f"{p}: folder holds no .parquet part files")
            fs = p.fs if isinstance(p, UriPath) else None
            table = pads.dataset([arrow_source(part)["source"] for part in parts],
                                 schema=SCHEMA, format="parquet", filesystem=fs).to_table()
        elif p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
        elif p.suffix.lower() == ".csv":
            # Columns of a later schema version are null in an older file's rows.
            opts = pacsv.ConvertOptions(column_types=CSV_SCHEMA, include_columns=SCHEMA.names,
                                        include_missing_columns=True,
                                        strings_can_be_null=True)  # empty cell = null
            source = p.fs.open_input_stream(p.path) if isinstance(p, UriPath) else p
            table = pacsv.read_csv(source, convert_options=opts)
            for f in SCHEMA:
                if not f.nullable and table.column(f.name).null_count:
                    raise OutputError(f"{p}: not a cage annotation file (no column {f.name})")
            table = _from_csv(table)
        else:
            table = pq.read_table(**arrow_source(p), schema=SCHEMA)
    except OutputError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, json.JSONDecodeError, KeyError, OSError) as e:
        raise OutputError(f"{p}: not a cage annotation file ({str(e).splitlines()[0]})") from None
    return table.replace_schema_metadata(SCHEMA.metadata)


def _from_csv(table: pa.Table) -> pa.Table:
    """A CSV output's table with ``embedding`` back as lists of float32 (write.csv_batch)."""
    i = table.schema.get_field_index("embedding")
    if i >= 0 and pa.types.is_string(table.schema.field(i).type):
        values = [None if v is None else [float(x) for x in v.split()]
                  for v in table.column(i).to_pylist()]
        table = table.set_column(i, "embedding", pa.array(values, EMBEDDING_TYPE))
    return table.cast(SCHEMA)


def read_run_info(path: str | Path | UriPath) -> list[dict]:
    """The run records (options, model, errors, ...) of an output; [] for JSONL/CSV."""
    p = location(path)
    if p.is_dir():
        return [json.loads(m.read_text()) for m in sorted(p.glob("_cage_run*.json"))]
    if p.suffix.lower() in (".parquet", ".pq"):
        meta = read_footer(p)  # the footer: files and part files
        return [json.loads(meta[META_KEY])] if META_KEY in meta else []
    return []
