"""Outputs on a pyarrow filesystem URI: ``-o s3://bucket/prefix/``, ``gs://...``, ``file://...``,
anything :meth:`pyarrow.fs.FileSystem.from_uri` accepts (docs/scaling.md).

:class:`UriPath` has the few :class:`pathlib.Path` methods the writer uses
(cage_cli/annotation/io/write.py), so the part protocol runs unchanged on it. Object stores have no
rename, so a file is written to a local temporary file first (``write.temp_for``) and then made
visible under its final name in one step (:meth:`UriPath.publish`): on an object store, one upload
stream, whose object appears only when the stream closes; elsewhere (``file://``, HDFS) a copy
beside it, renamed into place. Local paths never come here: they keep ``pathlib.Path``.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from pyarrow import fs as pafs

#: filesystems whose objects appear whole when their upload stream closes, and have no rename
OBJECT_STORES = {"s3", "gcs", "abfs"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(output: str) -> bool:
    """``scheme://...`` (not a local path)."""
    return bool(_SCHEME.match(output))


def uri_path(output: str) -> str:
    """The path part of a URI, without its query (``?endpoint_override=...``)."""
    return urlsplit(output).path


def redact(uri: str) -> str:
    """``uri`` without the credentials it may carry (``s3://KEY:SECRET@bucket/...``), for
    messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)


def one_line(e: BaseException) -> str:
    """An error's message on one line (S3 errors can span several)."""
    return " ".join(str(getattr(e, "strerror", None) or e).split())


class UriPath:
    """A file or folder on a pyarrow filesystem, shown as ``scheme://path`` (without the
    URI's credentials and query)."""

    def __init__(self, fs: pafs.FileSystem, path: str, shown: str):
        self.fs, self.path, self.shown = fs, path.rstrip("/"), shown.rstrip("/")

    @classmethod
    def from_uri(cls, uri: str) -> UriPath:
        """Raises ValueError (unknown scheme, bad URI) or OSError (filesystem unreachable)."""
        fs, path = pafs.FileSystem.from_uri(uri)
        return cls(fs, path, f"{urlsplit(uri).scheme}://{path}")

    # --- pathlib.Path's names, as far as the writer uses them --------------------------------
    def __truediv__(self, name: str) -> UriPath:
        return UriPath(self.fs, f"{self.path}/{name}", f"{self.shown}/{name}")

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"UriPath({self.shown!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __lt__(self, other: UriPath) -> bool:
        return self.path < other.path

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> UriPath:
        return UriPath(self.fs, self.path.rsplit("/", 1)[0], self.shown.rsplit("/", 1)[0])

    def with_name(self, name: str) -> UriPath:
        return self.parent / name

    def resolve(self) -> UriPath:
        return self

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def iterdir(self) -> list[UriPath]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(self / info.base_name for info in infos)

    def glob(self, pattern: str) -> list[UriPath]:
        """The entries of this folder whose name matches ``pattern`` (no subfolders)."""
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    # --- the one step that makes a written file visible --------------------------------------
    def publish(self, local: Path) -> None:
        """Make the local file ``local`` visible here, whole, in one step."""
        if self.fs.type_name in OBJECT_STORES:
            self._upload(local, self)  # the object appears when the stream closes
        else:
            tmp = self.with_name(f".{self.name}.tmp")
            self._upload(local, tmp)
            self.fs.move(tmp.path, self.path)  # a rename

    def _upload(self, local: Path, to: UriPath) -> None:
        out = self.fs.open_output_stream(to.path)
        try:
            with open(local, "rb") as f:
                shutil.copyfileobj(f, out, 8 * 2**20)
        except BaseException:
            # pyarrow cannot abort an upload: closing completes it, so remove what it left.
            try:
                out.close()
                self.fs.delete_file(to.path)
            except Exception:  # noqa: BLE001, S110 - the first error is the one to report
                pass
            raise
        out.close()

    def remove_tree(self) -> None:
        try:
            self.fs.delete_dir(self.path)
        except OSError:
            pass
