"""Stage 5: write rows, crash-safe.

Every run writes a Parquet *dataset*: part files that each hold complete inputs, written under
a temporary name and renamed when complete, with the inputs they finish listed in their own
metadata (``cage.done``). So at any moment the folder holds only whole files, and what is done
is exactly what the part files say.

* ``-o out_dir/``: the dataset is the output (``part-<shard>-<seq>.parquet`` + ``_cage_run*.json``).
* ``-o out.parquet|.jsonl|.csv``: the dataset lives in ``out.parquet.cage-partial/`` while the
  run goes; when it finishes, the parts are merged into ``out.parquet`` (written to a temporary
  name beside it, then renamed) and the folder is removed.
* ``-o -``: JSON lines on stdout, no resume.
* ``-o s3://bucket/prefix/`` (or ``.../out.parquet``; any pyarrow filesystem URI): the same,
  through :class:`cage_cli.annotation.io.store.UriPath`; a file is written locally, then
  published under its final name in one step (``temp_for``, ``_fsync_rename``).

``--resume`` reads the done inputs back from the parts and skips them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ...schema import CSV_SCHEMA, SCHEMA
from ..running.pipeline import Result
from .store import UriPath, is_uri, one_line, redact, uri_path

FORMATS = ("parquet", "jsonl", "csv")
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "jsonl", ".csv": "csv"}
PARTIAL_SUFFIX = ".cage-partial"
META_KEY = b"cage.run"
DONE_KEY = b"cage.done"


class OutputError(Exception):
    """The output cannot be written or resumed (message is user-facing)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def output_format(path: str, fmt: str | None) -> str:
    """'dataset' for folders, else parquet | jsonl | csv from --format or the extension."""
    if path == "-":
        return "jsonl"
    uri = is_uri(path)
    if uri:
        path = uri_path(path)  # without the query
    if path.endswith(("/", os.sep)) or (not uri and os.path.isdir(path)):
        if fmt not in (None, "parquet"):
            raise OutputError("a folder output is a Parquet dataset; --format must be parquet")
        return "dataset"
    if fmt:
        if fmt not in FORMATS:
            raise OutputError(f"unknown --format {fmt!r} (parquet, jsonl, csv)")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise OutputError(
            f"cannot tell the format of {path!r}: use .parquet, .jsonl or .csv, a folder "
            "ending in '/', or --format"
        )
    return EXTENSIONS[ext]


def output_location(output: str, doing: str = "use output") -> Path | UriPath:
    """``output`` as a path: a local :class:`Path`, or a :class:`UriPath` for a URI (a bad
    one: OutputError "cannot <doing> <uri>: why")."""
    if not is_uri(output):
        return Path(output)
    try:
        return UriPath.from_uri(output)
    except (ValueError, OSError) as e:
        raise OutputError(f"cannot {doing} {redact(output)}: {one_line(e)}") from None


def temp_for(final: Path | UriPath) -> Path:
    """Where to write ``final`` before :func:`_fsync_rename` puts it in place: beside it, or
    for a URI a local temporary file, ``cage-<name>.<pid>.<random>.tmp`` in $TMPDIR (the
    process id lets :func:`remove_stale_temps` tell a dead writer's file from a live one's)."""
    if isinstance(final, UriPath):
        remove_stale_temps()
        fd, tmp = tempfile.mkstemp(prefix=f"cage-{final.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        return Path(tmp)
    return final.with_name(f".{final.name}.tmp")


def remove_stale_temps() -> list[Path]:
    """Remove the local temporary files of URI outputs (:func:`temp_for`) whose process is
    gone on this machine, e.g. a Ray worker killed during an upload; returns them."""
    removed = []
    folder = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for tmp in folder.glob("cage-*.tmp"):
            pid = tmp.name.rsplit(".", 3)[1] if tmp.name.count(".") >= 3 else ""
            if not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def arrow_source(path: Path | UriPath) -> dict:
    """The arguments that make pyarrow read ``path`` (``source`` and ``filesystem``)."""
    if isinstance(path, UriPath):
        return {"source": path.path, "filesystem": path.fs}
    return {"source": path}


def read_footer(part: Path | UriPath) -> dict[bytes, bytes]:
    """A part file's key-value metadata."""
    a = arrow_source(part)
    return pq.read_metadata(a["source"], filesystem=a.get("filesystem")).metadata or {}


def _fsync_rename(tmp: Path, final: Path | UriPath) -> None:
    if isinstance(final, UriPath):
        try:
            final.publish(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def write_json_atomic(path: Path | UriPath, data: dict) -> None:
    tmp = temp_for(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync_rename(tmp, path)


@dataclass
class Done:
    """What the part files say is finished."""

    sources: dict[str, dict] = field(default_factory=dict)  # source -> {frames, error}
    next_seq: int = 0


def read_done(folder: Path | UriPath, tag: str | None = None) -> Done:
    """Finished inputs recorded in a dataset folder's part files (all shards, or one tag)."""
    done = Done()
    pattern = f"part-{tag}-*.parquet" if tag else "part-*.parquet"
    for part in sorted(folder.glob(pattern)):
        meta = read_footer(part)
        for entry in json.loads(meta.get(DONE_KEY, b"[]")):
            done.sources[entry["source"]] = entry
        if tag:
            done.next_seq = max(done.next_seq, int(part.stem.rsplit("-", 1)[1]) + 1)
    return done


class DatasetWriter:
    """Writes part files into ``folder``; each holds only complete inputs.

    Rows of the input in progress are buffered; an input bigger than ``spill_rows`` gets a part
    file of its own, streamed, so memory stays flat for long videos.
    """

    def __init__(self, folder: Path | UriPath, tag: str, run_info: dict, next_seq: int = 0,
                 part_rows: int = 200_000, part_seconds: float = 30.0,
                 spill_rows: int = 20_000):
        self.folder, self.tag, self.run_info = folder, tag, run_info
        self.seq = next_seq
        self.part_rows, self.part_seconds, self.spill_rows = part_rows, part_seconds, spill_rows
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._opened = time.monotonic()
        self._rows = 0
        self._done: list[dict] = []  # inputs complete in the open part
        self._pending: list[pa.RecordBatch] = []  # rows of the input in progress
        self._pending_rows = 0
        self._spilled = False  # the input in progress streams into a part of its own
        self.parts: list[Path | UriPath] = []

    def add(self, result: Result) -> None:
        if result.rows is not None and result.rows.num_rows:
            self._pending.append(result.rows)
            self._pending_rows += result.rows.num_rows
            if self._pending_rows >= self.spill_rows:
                if not self._spilled:
                    self.commit()  # finished inputs first, then this one alone
                    self._spilled = True
                self._flush_pending()
        if result.done:
            self._flush_pending()
            self._done.append({"source": result.source, "media": result.media,
                               "error": result.error})
            self._spilled = False
            if self._rows >= self.part_rows or (
                time.monotonic() - self._opened >= self.part_seconds
            ):
                self.commit()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self._open()
        table = pa.Table.from_batches(self._pending, schema=SCHEMA)
        self._writer.write_table(table)  # type: ignore[union-attr]
        self._rows += table.num_rows
        self._pending, self._pending_rows = [], 0

    def _open(self) -> None:
        self._tmp = temp_for(self.folder / f"part-{self.tag}-{self.seq:05d}.parquet")
        self._writer = pq.ParquetWriter(self._tmp, SCHEMA, compression="zstd")
        self._opened = time.monotonic()

    def commit(self) -> None:
        """Close the open part (complete inputs only) and rename it into place."""
        if not self._done:
            return
        if self._writer is None:
            self._open()
        meta = {META_KEY: json.dumps(self.run_info), DONE_KEY: json.dumps(self._done)}
        self._writer.add_key_value_metadata(meta)  # type: ignore[union-attr]
        self._writer.close()  # type: ignore[union-attr]
        final = self.folder / f"part-{self.tag}-{self.seq:05d}.parquet"
        _fsync_rename(self._tmp, final)  # type: ignore[arg-type]
        self.parts.append(final)
        self.seq += 1
        self._writer, self._tmp, self._rows, self._done = None, None, 0, []
        self._opened = time.monotonic()

    def close(self) -> None:
        """Commit what is complete; drop the rows of an unfinished input."""
        self._pending, self._pending_rows = [], 0
        if self._spilled:  # the open part holds only the unfinished input
            self._discard()
        else:
            self.commit()
            self._discard()

    def _discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._writer, self._tmp, self._rows, self._done = None, None, 0, []


class StdoutWriter:
    """JSON lines on stdout (``-o -``)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def add(self, result: Result) -> None:
        if result.rows is not None:
            for row in result.rows.to_pylist():
                self.stream.write(json.dumps(row) + "\n")
            self.stream.flush()


def merge_parts(parts: list[Path | UriPath], final: Path | UriPath, fmt: str,
                metadata: dict[str, Any]) -> int:
    """Stream the rows of ``parts`` into ``final`` (written as a temp file, then renamed)."""
    tmp = temp_for(final)
    rows = 0
    try:
        if fmt == "parquet":
            schema = SCHEMA.with_metadata({**SCHEMA.metadata, META_KEY: json.dumps(metadata)})
            with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
                for batch in _batches(parts):
                    w.write_batch(batch)
                    rows += batch.num_rows
        elif fmt == "csv":
            with pacsv.CSVWriter(tmp, CSV_SCHEMA) as w:
                for batch in _batches(parts):
                    w.write_batch(csv_batch(batch))
                    rows += batch.num_rows
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                sw = StdoutWriter(f)
                for batch in _batches(parts):
                    sw.add(Result("", "", batch))
                    rows += batch.num_rows
        _fsync_rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def csv_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch as CSV holds it: ``embedding`` as text, its values separated by spaces, each
    with the 9 digits that give the float32 back (cage_cli.annotation.io.read reads it)."""
    i = SCHEMA.get_field_index("embedding")
    text = [None if v is None else " ".join(format(x, ".9g") for x in v)
            for v in batch.column(i).to_pylist()]
    return batch.set_column(i, CSV_SCHEMA.field(i), pa.array(text, pa.string()))


def _batches(parts: list[Path | UriPath]) -> Iterator[pa.RecordBatch]:
    for part in parts:
        yield from pq.ParquetFile(**arrow_source(part)).iter_batches(batch_size=65536)


def check_writable(folder: Path | UriPath) -> None:
    """Fail early (exit 2) if ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cage-write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to {folder}: {one_line(e)}") from None


def remove_tree(folder: Path | UriPath) -> None:
    if isinstance(folder, UriPath):
        folder.remove_tree()
    else:
        shutil.rmtree(folder, ignore_errors=True)
