"""`cage persons`: run-wide persons over outputs of `cage annotate --persons`
(cage_cli.annotation.identity.persons.link_sources), written as a table that joins onto the rows."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .summary import VizError, load_annotations

PersonsError = VizError
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def link_outputs(annotations: list[str], output: str, threshold: float,
                 overwrite: bool = False) -> pa.Table:
    """Read the outputs, link their persons, write ``output``; returns the persons table."""
    from ..annotation.identity.persons import link_sources

    out = Path(output)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise PersonsError(f"{output}: give a .parquet or .csv file for the persons table")
    if out.exists() and not overwrite:
        raise PersonsError(f"{output} exists; use --overwrite to replace it")
    tables = [load_annotations(a)[0] for a in annotations]
    for a, t in zip(annotations, tables, strict=True):
        if t.column("person_id").null_count == t.num_rows:
            raise PersonsError(f"{a}: no person ids; annotate with --persons first")
    table = link_sources(pa.concat_tables(tables), threshold)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PersonsError(f"cannot write {output}: {e.strerror or e}") from None
    return table


def print_persons(table: pa.Table, console, output: str) -> None:  # noqa: ANN001 - rich Console
    """One line per person: faces, sources (the first few named)."""
    from rich.table import Table

    by = table.group_by("person").aggregate([("face_index", "count"),
                                             ("source", "count_distinct"),
                                             ("source", "distinct")])
    by = by.sort_by("person")
    t = Table(title=f"cage persons: {len(by)} persons, "
                    f"{len(set(table.column('source').to_pylist()))} sources -> {output}")
    for name in ("person", "faces", "sources", "in"):
        t.add_column(name, justify="left" if name == "in" else "right")
    for p, faces, n, names in zip(*(by.column(c).to_pylist() for c in (
            "person", "face_index_count", "source_count_distinct", "source_distinct")),
            strict=True):
        shown = ", ".join(Path(s).name for s in names[:3]) + (" ..." if n > 3 else "")
        t.add_row(str(p), str(faces), str(n), shown)
    console.print(t)
