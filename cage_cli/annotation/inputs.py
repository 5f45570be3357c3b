"""Stage 1: find the inputs. Files, folders (recursive) and glob patterns -> sorted media files."""

from __future__ import annotations

import glob
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})


@dataclass(frozen=True)
class MediaFile:
    path: str  # as given by the user, or joined from the folder they gave
    media: str  # "image" | "video"


@dataclass
class Inputs:
    files: list[MediaFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not a media extension
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def media_kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def read_list(path: str) -> list[str]:
    """Paths from a file, one per line (``-`` = stdin); blank lines and ``#`` comments ignored."""
    import sys

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


def _walk(folder: str, errors: list[tuple[str, str]],
          warnings: list[tuple[str, str]]) -> Iterable[str]:
    """Files below ``folder``, following symlinked folders once each (loops are cut)."""
    seen = {os.path.realpath(folder)}

    def onerror(e: OSError) -> None:
        errors.append((e.filename or folder, e.strerror or str(e)))

    for root, dirs, names in os.walk(folder, onerror=onerror, followlinks=True):
        dirs.sort()
        for d in list(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real in seen:
                warnings.append((os.path.join(root, d), "symlink loop or folder seen twice; "
                                                        "not followed again"))
                dirs.remove(d)
            seen.add(real)
        for name in names:
            p = os.path.join(root, name)
            if os.path.islink(p) and not os.path.exists(p):
                errors.append((p, "broken symlink (or symlink loop)"))
                continue
            yield p


def discover(paths: Iterable[str]) -> Inputs:
    """Expand files, folders and globs into sorted, de-duplicated media files."""
    out = Inputs()
    found: set[str] = set()
    for given in paths:
        if os.path.isdir(given):
            candidates = list(_walk(given, out.errors, out.warnings))
        elif os.path.lexists(given):
            if os.path.islink(given) and not os.path.exists(given):
                out.errors.append((given, "broken symlink (or symlink loop)"))
                continue
            candidates = [given]
        elif glob.has_magic(given):
            candidates = []
            for m in glob.glob(given, recursive=True):
                candidates.extend(_walk(m, out.errors, out.warnings) if os.path.isdir(m) else [m])
            if not candidates:
                out.errors.append((given, "pattern matches no file"))
        else:
            out.errors.append((given, "no such file or folder"))
            continue
        for p in candidates:
            if media_kind(p) is None:
                out.skipped.append(p)
            else:
                found.add(p)
    out.files = [MediaFile(p, media_kind(p)) for p in sorted(found)]  # type: ignore[arg-type]
    return out


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def in_shard(path: str, shard: tuple[int, int]) -> bool:
    """Deterministic partition by a stable hash of the path: adding files moves no others."""
    i, n = shard
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % n == i
