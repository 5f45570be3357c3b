"""Stage 1: find the inputs. Files, folders (recursive) and glob patterns -> sorted media files.

What is read is listed once, in :data:`FORMATS`. Folder walks and globs take files by their
extension (probing every file of a tree would be slow); a file named explicitly (on the command
line or in ``--files-from``) with no or another extension is probed by its content (Pillow,
then PyAV). Decoding always goes by content, so a PNG named ``.jpg`` or an MPEG-TS stream
named ``.mp4`` is read as what it is.
"""

from __future__ import annotations

import glob
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Every file extension cage reads: extension -> (kind, why it is here). Photos are decoded by
#: Pillow (decode.load_image), videos by PyAV, FFmpeg's libraries (decode.video_index), all
#: alike: timestamps from the stream, rotation and EXIF orientation honoured.
FORMATS: dict[str, tuple[str, str]] = {
    ".jpg": ("image", "JPEG: cameras, phones, the web"),
    ".jpeg": ("image", "JPEG"),
    ".jfif": ("image", "JPEG, as some browsers save it"),
    ".png": ("image", "PNG: screenshots, datasets"),
    ".bmp": ("image", "Windows bitmap"),
    ".webp": ("image", "WebP: the web, Android"),
    ".tif": ("image", "TIFF: scanners, microscopes (first page)"),
    ".tiff": ("image", "TIFF"),
    ".gif": ("image", "GIF (first frame)"),
    ".avif": ("image", "AVIF: AV1 stills, the web (Pillow 11.3+ reads them)"),
    ".heic": ("image", "HEIF/HEVC: iPhones' default photo format (pi-heif, loaded when seen)"),
    ".heif": ("image", "HEIF (pi-heif)"),
    ".hif": ("image", "HEIF from Canon, Sony and Fujifilm cameras (pi-heif)"),
    ".jp2": ("image", "JPEG 2000: archives, digitised collections"),
    ".pgm": ("image", "Netpbm grey: classic face datasets (ORL, FERET)"),
    ".ppm": ("image", "Netpbm colour: classic face datasets"),
    ".pnm": ("image", "Netpbm"),
    ".mp4": ("video", "MPEG-4: phones, cameras, the web"),
    ".m4v": ("video", "MPEG-4 (Apple)"),
    ".mov": ("video", "QuickTime: iPhones, cameras"),
    ".avi": ("video", "AVI: webcams, older cameras, lab recordings"),
    ".mkv": ("video", "Matroska"),
    ".webm": ("video", "WebM: browser recordings"),
    ".mts": ("video", "AVCHD camcorders (MPEG-TS with 192-byte packets)"),
    ".m2ts": ("video", "AVCHD camcorders, Blu-ray (MPEG-TS)"),
    ".m2t": ("video", "HDV camcorders (MPEG-TS)"),
    ".ts": ("video", "MPEG transport stream: broadcast and IPTV captures (checked for "
                     "MPEG-TS sync bytes in folders: TypeScript shares the extension)"),
    ".mpg": ("video", "MPEG-1/2 program stream: lab and archive footage"),
    ".mpeg": ("video", "MPEG-1/2 program stream"),
    ".vob": ("video", "DVD video (MPEG-2 program stream)"),
    ".wmv": ("video", "Windows Media Video (ASF container)"),
    ".asf": ("video", "Windows Media (ASF)"),
    ".flv": ("video", "Flash video: older web downloads"),
    ".3gp": ("video", "3GPP: older phones"),
    ".3g2": ("video", "3GPP2: older phones"),
    ".ogv": ("video", "Ogg Theora: Wikimedia"),
    ".mxf": ("video", "MXF: broadcast and professional cameras"),
    ".dv": ("video", "DV camcorders"),
    ".y4m": ("video", "YUV4MPEG: raw test sequences"),
}
IMAGE_EXTS = frozenset(e for e, (kind, _) in FORMATS.items() if kind == "image")
VIDEO_EXTS = frozenset(e for e, (kind, _) in FORMATS.items() if kind == "video")

#: Pillow formats a probed file may turn out to be (MPO: many camera JPEGs); others that
#: Pillow would guess from a few bytes (TGA, ICO, ...) are not taken for photos.
PROBE_IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF", "AVIF", "HEIF",
                       "JPEG2000", "PPM")
#: FFmpeg demuxers that are not videos, though they give a video stream (text as ANSI art,
#: single images: Pillow has its turn first).
NOT_VIDEO_DEMUXERS = frozenset({"tty", "image2", "lavfi"})
#: Why a file is left out (Inputs.skipped).
SKIPPED_EXTENSION = "not an image or video extension"
SKIPPED_TYPESCRIPT = ".ts but not an MPEG transport stream"
SKIPPED_CONTENT = "neither Pillow nor PyAV reads it as an image or video"


@dataclass(frozen=True)
class MediaFile:
    path: str  # as given by the user, or joined from the folder they gave
    media: str  # "image" | "video"


@dataclass
class Inputs:
    files: list[MediaFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): not media
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def media_kind(path: str) -> str | None:
    """'image' or 'video' from the file's extension (:data:`FORMATS`), else None."""
    entry = FORMATS.get(os.path.splitext(path)[1].lower())
    return entry[0] if entry else None


def is_transport_stream(path: str) -> bool:
    """An MPEG-TS file starts with its sync byte 0x47 (a TypeScript file does not)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x47"
    except OSError:
        return True  # let decoding report why it cannot be read


def probe(path: str) -> str | None:
    """'image' or 'video' by content: what Pillow opens, else what PyAV finds a video stream
    in; None for anything else (or a file that cannot be read)."""
    from PIL import Image

    from .decode import register_heif

    try:
        register_heif(path)
        with Image.open(path, formats=PROBE_IMAGE_FORMATS):
            return "image"
    except Exception:  # noqa: BLE001 - not an image Pillow reads: try it as a video
        pass
    import av

    try:
        with av.open(path) as container:
            if container.streams.video and not (container.format.name in NOT_VIDEO_DEMUXERS
                                                or container.format.name.endswith("_pipe")):
                return "video"
    except Exception:  # noqa: BLE001 - neither: not media
        pass
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
    """Expand files, folders and globs into sorted, de-duplicated media files. Files in
    folders and glob matches are taken by extension; a file named itself with no or an
    unknown extension is probed by content."""
    out = Inputs()
    found: dict[str, str] = {}
    for given in paths:
        explicit = False
        if os.path.isdir(given):
            candidates = list(_walk(given, out.errors, out.warnings))
        elif os.path.lexists(given):
            if os.path.islink(given) and not os.path.exists(given):
                out.errors.append((given, "broken symlink (or symlink loop)"))
                continue
            candidates, explicit = [given], True
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
            kind = media_kind(p)
            if kind == "video" and p.lower().endswith(".ts") and not is_transport_stream(p):
                kind, why = None, SKIPPED_TYPESCRIPT
            else:
                why = SKIPPED_EXTENSION
            if kind is None and explicit:
                kind, why = probe(p), SKIPPED_CONTENT
            if kind is None:
                out.skipped.append((p, why))
            else:
                found[p] = kind
    out.files = [MediaFile(p, found[p]) for p in sorted(found)]
    out.skipped.sort()
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
