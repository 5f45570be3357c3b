"""Stage 2: decode. A media file -> sampled RGB frames (Pillow for images; videos indexed from
their packets and decoded in order by PyAV)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image, ImageOps

from ..detection import shots
from .inputs import MediaFile

#: --max-pixels: larger images and video frames are refused from their header, undecoded.
MAX_PIXELS = 250_000_000
# cage checks each file's size itself (Sampling.max_pixels) before decoding anything, so
# Pillow's own guard, a warning at its limit and an error only at twice that, is off.
Image.MAX_IMAGE_PIXELS = None


class DecodeError(Exception):
    """A file cannot be (fully) decoded. The message is the user-facing reason."""


@dataclass(frozen=True)
class Sampling:
    """Which frames to use: images always give one frame, videos those sampled here; an image
    or video over ``max_pixels`` pixels (width x height) gives none and fails."""

    fps: float | None = None  # sample at this many frames per second of video time
    every: int = 1  # then keep every N-th
    max_frames: int | None = None
    start: float = 0.0  # seconds
    end: float | None = None
    max_pixels: int = MAX_PIXELS


@dataclass
class Frame:
    source: str
    media: str
    index: int
    timestamp: float | None  # seconds from the video's own timestamps; None for images
    image: np.ndarray  # (H, W, 3) uint8 RGB
    position: int = 0  # videos: 0, 1, ... over the sampled frames
    #: videos: the index of the sampled frame before this one; None for the first
    previous: int | None = None
    cut: bool = False  # videos: a shot change from the sampled frame before (shots.py)


def frames(file: MediaFile, sampling: Sampling = Sampling(),
           positions: tuple[int, int | None] | None = None, cuts: bool = True,
           block: int = 1) -> Iterator[Frame]:
    """Yield the sampled frames of ``file``; raises DecodeError (after any good frames).
    Video frames say which frame came before and whether they begin a new shot (``cuts``).
    ``positions`` (first, end): of a video, only the sampled frames at those positions (a
    segment of a ``--ray`` run), numbered as in the whole video, each end moved on to the
    next frame that begins a block of ``block`` video frames (a keyframe whatever the
    pictures, cage_cli.annotation.running.pipeline), so that a segment splits no chunk."""
    _check_readable(file.path)
    if file.media == "image":
        yield Frame(file.path, "image", 0, None, load_image(file.path, sampling.max_pixels))
    else:
        yield from _video_frames(file.path, sampling, positions, cuts, block)


def check_size(width: int, height: int, max_pixels: int | None) -> None:
    """Refuse a frame size over ``max_pixels`` (checked from headers, before decoding)."""
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(f"image too large ({width} x {height} = {width * height} pixels, "
                          f"limit --max-pixels {max_pixels})")


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb") as f:
            if not f.read(1):
                raise DecodeError("empty file (0 bytes)")
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a folder") from None
    except OSError as e:
        raise DecodeError(e.strerror or str(e)) from None


#: HEIF's major brands (ISO/IEC 23008-12; Canon's HIF and iPhones' HEIC among them). AVIF
#: ("avif") is Pillow's own.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif",
                         b"mif1", b"msf1"})
_heif_registered = False


def register_heif(path: str) -> bool:
    """If ``path`` is a HEIF file (by its first 12 bytes), make Pillow read it: pi-heif's
    plugin is imported on the first such file only, so runs without one never load it.
    Raises DecodeError if pi-heif is not installed."""
    global _heif_registered
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False  # the caller reports why it cannot be read
    if head[4:8] != b"ftyp" or head[8:12] not in HEIF_BRANDS:
        return False
    if not _heif_registered:
        try:
            from pi_heif import register_heif_opener
        except ImportError:
            raise DecodeError("HEIF photo, and pi-heif (its reader) is not installed: "
                              "pip install pi-heif") from None
        register_heif_opener()
        _heif_registered = True
    return True


def load_image(path: str, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Open an image as (H, W, 3) uint8 RGB: EXIF orientation applied, any mode converted.

    Animated images (GIF, WebP, TIFF pages) give their first frame. An image over
    ``max_pixels`` is refused from its header, before any pixel is decoded. Each step frees
    the one before, so at most two copies of the pixels exist at once.
    """
    register_heif(path)
    try:
        with Image.open(path) as im:
            check_size(*im.size, max_pixels)
            im.load()
            try:
                upright = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
                upright = im
            if upright is not im:
                im.close()
            rgb = to_rgb(upright)
            if rgb is not upright:
                upright.close()
            return _to_array(rgb)
    except Image.UnidentifiedImageError:
        raise DecodeError("not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"cannot decode image: {e}") from None


def _to_array(rgb: Image.Image) -> np.ndarray:
    """An RGB image's pixels as (H, W, 3) uint8, copied in strips of rows: np.asarray of a
    whole image goes through a bytes copy, a third full copy of a big photo at once."""
    w, h = rgb.size
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, 2**24 // max(1, w * 4))  # about 16 MiB of Pillow pixels per strip
    for y in range(0, h, step):
        out[y : y + step] = np.asarray(rgb.crop((0, y, w, min(h, y + step))))
    rgb.close()
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode in ("LA", "PA", "RGBA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def sample_indices(timestamps: np.ndarray, s: Sampling) -> np.ndarray:
    """Indices of the frames to use, from each frame's start time in seconds."""
    idx = np.arange(len(timestamps))
    keep = timestamps >= s.start - 1e-6
    if s.end is not None:
        keep &= timestamps < s.end
    idx = idx[keep]
    if s.fps and len(idx):
        t = timestamps[idx]
        targets = t[0] + np.arange(0.0, t[-1] - t[0] + 1e-9, 1.0 / s.fps)
        pos = np.searchsorted(t, targets - 1e-6)
        idx = np.unique(idx[pos[pos < len(idx)]])
    if s.every > 1:
        idx = idx[:: s.every]
    if s.max_frames is not None:
        idx = idx[: s.max_frames]
    return idx


def estimated_count(path: str, sampling: Sampling) -> int:
    """About how many frames of the video ``frames`` yields, from its header only (frame
    count or duration, and frame rate; milliseconds, where indexing the packets takes a
    second or more per hour of video); 0 if the header does not say."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        n = stream.frames
        if not n and stream.duration and stream.time_base:
            n = round(float(stream.duration * stream.time_base) * rate)
    if not n or not rate:
        return 0
    return len(sample_indices(np.arange(n) / rate, sampling))


def _video_frames(path: str, sampling: Sampling,
                  positions: tuple[int, int | None] | None = None, cuts: bool = True,
                  block: int = 1) -> Iterator[Frame]:
    """Sampled frames of a video: its packets index it (timestamps and keyframes, no
    decoding), PyAV decodes it in order. A segment (``positions``) decodes the frame before
    its first too, for the first's ``previous`` and cut test, and does not yield it.

    decord's CPU reader is not used: it keeps decoding ahead in a background thread, without
    bound, while the caller is busy (dmlc/decord#157, #208), so a slow consumer ends up
    holding the rest of the video in memory (docs/performance.md).
    """
    timestamps, keys = video_index(path, sampling.max_pixels)
    want = sample_indices(timestamps, sampling)
    first, context = 0, 0
    if positions is not None:
        first, end = (None if p is None else block_start(want, p, block) for p in positions)
        context = min(first, 1)
        want = want[first - context : end]
    if len(want) > context:
        decoded = _decode(path, timestamps, keys, want, first - context)
        yield from _shots(decoded, cuts, context)


def block_start(want: np.ndarray, position: int, block: int) -> int:
    """The first position at or after ``position`` whose frame (of the sampled frame indices
    ``want``) begins a block of ``block`` video frames; len(want) if there is none."""
    if position <= 0:
        return 0
    blocks = want // block
    begins = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
    i = int(np.searchsorted(begins, position))
    return int(begins[i]) if i < len(begins) else len(want)


def _shots(decoded: Iterator[Frame], cuts: bool, skip: int) -> Iterator[Frame]:
    """The frames with ``previous`` and ``cut`` set (a thumbnail of each frame compared with
    the one before, shots.py), less the first ``skip`` (0 or 1)."""
    before: tuple[int, float, np.ndarray | None] | None = None
    for frame in decoded:
        thumb = shots.thumbnail(frame.image) if cuts else None
        if before is not None:
            frame.previous = before[0]
            frame.cut = thumb is not None and shots.is_cut(
                before[2], thumb, frame.timestamp - before[1])  # type: ignore[arg-type]
        if skip:
            skip -= 1
        else:
            yield frame
        before = (frame.index, frame.timestamp, thumb)  # type: ignore[assignment]


def video_frames_at(path: str, indices: list[int]) -> Iterator[Frame]:
    """The frames at these indices (as annotate numbered them), in order."""
    timestamps, keys = video_index(path)
    if indices and max(indices) >= len(timestamps):
        raise DecodeError(f"frame {max(indices)} is past the video's end ({len(timestamps)} "
                          "frames; a different file?)")
    if indices:
        yield from _decode(path, timestamps, keys, np.unique(np.asarray(indices)))


def video_index(path: str, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's start time (float64 seconds from the stream's start, in presentation
    order) and the keyframe indices, from the packets (no decoding), up to any break in the
    file. Frames over ``max_pixels`` are refused from the stream's header."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("cannot open video: no video stream")
            stream = container.streams.video[0]
            check_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
            pts, key_pts = [], []
            try:
                for packet in container.demux(stream):
                    if packet.pts is not None:
                        pts.append(packet.pts)
                        if packet.is_keyframe:
                            key_pts.append(packet.pts)
            except av.FFmpegError:
                pass  # the index ends where the file breaks
            start, base = stream.start_time or 0, stream.time_base
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError(f"cannot open video: {_av_reason(e)}") from None
    if not pts:
        raise DecodeError("video has no decodable frames")
    order = np.sort(np.array(pts, np.int64))
    keys = np.searchsorted(order, np.array(key_pts, np.int64))
    return _seconds(order - start, base), keys


def _seconds(ticks: np.ndarray, time_base: Fraction) -> np.ndarray:
    """Integer timestamps in seconds, as PyAV's ``frame.time`` computes them (float64,
    exact for ticks x numerator below 2**53, then one rounding)."""
    return np.asarray(ticks, np.float64) * time_base.numerator / time_base.denominator


def _decode(path: str, timestamps: np.ndarray, keys: np.ndarray,
            want: np.ndarray, first: int = 0) -> Iterator[Frame]:
    """Decode in order and yield the ``want`` frames (sorted indices), at positions
    ``first``, ``first`` + 1, ... Each decoded frame is
    matched to its index by its timestamp; the decoder seeks to a keyframe when one lies
    between the current frame and the next wanted frame, so sparse sampling skips ahead."""
    import av

    wanted, j, i = want.tolist(), 0, -1
    keys = np.unique(np.concatenate([[0], keys]))
    with av.open(path) as container:
        stream = container.streams.video[0]
        start, base = stream.start_time or 0, stream.time_base

        def keyframe_before(index: int) -> int:
            return int(keys[np.searchsorted(keys, index, side="right") - 1])

        def seek(index: int) -> Iterator[av.VideoFrame]:
            """Decode from the keyframe at or before frame ``index`` (0: the start)."""
            target = timestamps[index] + 1e-3 if index > 0 else 0.0
            _seek(container, start + int(target / float(base)), stream)
            return container.decode(stream)

        # Seek forward only, never twice to one place; stop seeking if a seek overshoots
        # (some containers have imprecise indexes) and decode from the start instead.
        sought, can_seek = keyframe_before(wanted[0]), True
        decoded, check = (seek(sought), True) if sought > 0 else (container.decode(stream), False)
        try:
            while j < len(wanted):
                frame = next(decoded, None)
                if frame is None:
                    break
                i = _frame_index(frame, start, base, timestamps, i)
                if check:
                    check = False
                    if i > wanted[j]:  # landed past the frame we need
                        can_seek, i, decoded = False, -1, seek(0)
                        continue
                while j < len(wanted) and wanted[j] < i:  # not in the stream: skip
                    j += 1
                if j < len(wanted) and wanted[j] == i:
                    yield Frame(path, "video", i, float(timestamps[i]), _upright(frame),
                                first + j)
                    j += 1
                if can_seek and j < len(wanted) and keyframe_before(wanted[j]) > max(i + 1,
                                                                                    sought):
                    sought = keyframe_before(wanted[j])
                    decoded, check = seek(sought), True
        except av.FFmpegError as e:
            if i < 0:
                raise DecodeError(f"video has no decodable frames ({_av_reason(e)})") from None
            raise DecodeError(f"video stream breaks at frame {i + 1}: {_av_reason(e)}") from None
    if j < len(wanted):
        if i < 0:
            raise DecodeError("video has no decodable frames")
        raise DecodeError(f"video stream breaks at frame {i + 1} of {len(timestamps)}")


def _seek(container, offset: int, stream) -> None:  # noqa: ANN001 - PyAV objects
    """Seek ``container`` to the keyframe at or before ``offset`` (in ``stream``'s time base).
    One place, so a test can make a seek land late (PyAV's classes cannot be patched on every
    Python: CPython 3.10's wheel has immutable types)."""
    container.seek(offset, stream=stream, backward=True)


def _upright(frame) -> np.ndarray:
    """RGB pixels as displayed: the stream's rotation (display matrix) applied, as decord does."""
    image = frame.to_ndarray(format="rgb24")
    if frame.rotation:  # degrees counterclockwise
        image = np.ascontiguousarray(np.rot90(image, frame.rotation // 90 % 4))
    return image


def _frame_index(frame, start: int, base: Fraction, timestamps: np.ndarray,
                 previous: int) -> int:
    """The index of a decoded frame: the frame whose timestamp is nearest its own."""
    if frame.pts is None:
        return previous + 1
    t = float(_seconds(frame.pts - start, base))
    k = int(np.searchsorted(timestamps, t))
    if k > 0 and (k == len(timestamps) or t - timestamps[k - 1] < timestamps[k] - t):
        k -= 1
    return k


def _av_reason(e: BaseException) -> str:
    """PyAV's message without errno and call site: 'Invalid data found when processing input'."""
    return re.sub(r"^\[Errno -?\d+\] ", "", str(e).split(": '")[0])
