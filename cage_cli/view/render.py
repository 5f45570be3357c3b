"""`cage render`: draw the annotations onto copies of the photos and videos they describe.

Each face gets its box (coloured by label), its five landmarks, a tag with the label and its
probability, and a small valence/arousal marker: a circle (valence left to right, arousal
bottom to top, radius 1) with a dot at the face's (valence, arousal). A face with a
``track_id`` (videos) gets its box and landmarks in the track's colour (:func:`track_color`,
the same one `cage plot` uses for the track's line) and the id in a badge before the tag,
which keeps the label's colour. A face with a ``person_id`` (``cage annotate --persons``) gets
the person's colour instead (:func:`person_color`, the colour of the person's line in
`cage plot`) and a ``P<id>`` badge: all tracks of one person look the same.

Photos are read with :func:`cage_cli.annotation.io.decode.load_image` (EXIF orientation applied,
like `cage annotate`), so boxes land where they were found. Videos are decoded with PyAV and
re-encoded as H.264 MP4 with the source's size, frame count and frame timestamps (so the same
duration and frame rate); an AAC/MP3/... audio track is copied unchanged.

Unsampled video frames (``cage annotate --fps/--every``): a frame that was not sampled shows
the annotation of the nearest earlier sampled frame if that is at most ``hold`` seconds
earlier, else it stays clean. A sampled frame where no face was found is clean and ends the
hold when the output says which frames were sampled (Parquet run metadata, or --keep-empty
rows); JSONL/CSV outputs without --keep-empty cannot tell, so the hold covers such frames too.

The sources are never modified: outputs are written under a temporary name and renamed, an
output that is the source itself is refused, and an existing output needs ``overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from ..annotation.io.inputs import media_kind
from ..schema import EXPRESSIONS, LANDMARK_COLUMNS
from .summary import VizError, load_annotations, match_source, sources_of

#: One colour per expression (RGB), shared with `cage plot`.
LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "neutral": (158, 158, 158),
    "happy": (255, 193, 7),
    "sad": (33, 120, 230),
    "surprise": (0, 188, 212),
    "fear": (156, 39, 176),
    "disgust": (76, 175, 80),
    "anger": (244, 67, 54),
    "contempt": (141, 96, 70),
}
OTHER_COLOR = (255, 255, 255)
#: Track colours (RGB), by ``track_id`` modulo their number; Tableau 10 with navy for grey
#: (grey is the neutral label's colour).
TRACK_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (40, 40, 150), (188, 189, 34), (23, 190, 207),
)
#: Default hold time in seconds for unsampled video frames.
DEFAULT_HOLD = 1.0
VIDEO_OUT_EXTS = (".mp4", ".m4v")
#: Audio codecs copied into the MP4 as they are; others are dropped (with a note).
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})

_FACE_COLUMNS = ("frame_index", "face_index", "track_id", "person_id", "x1", "y1", "x2", "y2",
                 "label", "valence", "arousal", *LANDMARK_COLUMNS, *(f"p_{e}" for e in EXPRESSIONS))


def label_color_hex(label: str) -> str:
    r, g, b = LABEL_COLORS.get(label, (120, 120, 120))
    return f"#{r:02x}{g:02x}{b:02x}"


def track_color(track_id: int) -> tuple[int, int, int]:
    """The colour (RGB) of a track, shared by `cage render` boxes and `cage plot` lines."""
    return TRACK_COLORS[track_id % len(TRACK_COLORS)]


def track_color_hex(track_id: int) -> str:
    r, g, b = track_color(track_id)
    return f"#{r:02x}{g:02x}{b:02x}"


#: A person's colour: the same palette, by ``person_id`` (persons replace tracks where known).
person_color = track_color
person_color_hex = track_color_hex


def badge_of(face: dict) -> tuple[str, tuple[int, int, int]] | None:
    """The id badge of a face and its colour: ``P<person_id>`` in the person's colour, else
    ``#<track_id>`` in the track's colour, else None."""
    if face.get("person_id") is not None:
        return f"P{face['person_id']}", person_color(face["person_id"])
    if face.get("track_id") is not None:
        return f"#{face['track_id']}", track_color(face["track_id"])
    return None


# --- drawing -------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_faces(image: Image.Image, faces: list[dict]) -> None:
    """Draw each face (a row as a dict) onto ``image`` (RGB), in place."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    min_font = max(10, round(min(width, height) / 90))
    for f in faces:
        if f.get("x1") is None:
            continue
        x1, y1, x2, y2 = (float(f[k]) for k in ("x1", "y1", "x2", "y2"))
        label = f.get("label") or "?"
        color = LABEL_COLORS.get(label, OTHER_COLOR)
        badge = badge_of(f)
        edge = color if badge is None else badge[1]
        side = max(x2 - x1, y2 - y1, 1.0)
        lw = int(_clamp(round(side / 60), 1, 8))
        draw.rectangle((x1, y1, x2, y2), outline=edge, width=lw)
        # landmarks
        r = max(1.5, lw * 1.3)
        for i in range(0, len(LANDMARK_COLUMNS), 2):
            x, y = f.get(LANDMARK_COLUMNS[i]), f.get(LANDMARK_COLUMNS[i + 1])
            if x is not None and y is not None:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=edge, outline=(0, 0, 0))
        # tag above the face (inside it at the top edge): ["#id"] "label 87%" [VA marker]
        prob = f.get(f"p_{label}")
        text = label if prob is None else f"{label} {prob:.0%}"
        font = _font(int(_clamp(round(side * 0.16), min_font, 48)))
        pad = max(2, lw)
        parts = [(text, color)] if badge is None else [badge, (text, color)]
        boxes = [draw.textbbox((0, 0), t, font=font) for t, _ in parts]
        ty0 = min(b[1] for b in boxes)
        tag_h = max(b[3] for b in boxes) - ty0 + 2 * pad
        widths = [b[2] - b[0] + 2 * pad for b in boxes]
        mark_r = tag_h / 2
        total_w = sum(widths) + 2 * mark_r + pad
        left = _clamp(x1 - lw / 2, 0, max(0, width - total_w))
        top = y1 - lw / 2 - tag_h
        if top < 0:
            top = min(y1 + lw, max(0, height - tag_h))
        for (t, fill), b, w in zip(parts, boxes, widths, strict=True):
            draw.rectangle((left, top, left + w, top + tag_h), fill=fill)
            draw.text((left + pad - b[0], top + pad - ty0), t, fill=_text_color(fill), font=font)
            left += w
        # valence/arousal marker right of the tag
        v, a = f.get("valence"), f.get("arousal")
        if v is not None and a is not None:
            cx, cy = left + pad / 2 + mark_r, top + mark_r
            _va_marker(draw, cx, cy, mark_r, float(v), float(a), color)


def _va_marker(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, v: float, a: float,
               color: tuple[int, int, int]) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255), outline=(40, 40, 40),
                 width=max(1, round(r / 8)))
    inner = r * 0.8
    grey = (170, 170, 170)
    draw.line((cx - inner, cy, cx + inner, cy), fill=grey, width=1)
    draw.line((cx, cy - inner, cx, cy + inner), fill=grey, width=1)
    d = max(1.5, r * 0.28)
    px, py = cx + _clamp(v, -1, 1) * inner, cy - _clamp(a, -1, 1) * inner
    draw.ellipse((px - d, py - d, px + d, py + d), fill=color, outline=(0, 0, 0))


# --- planning: which source goes where ------------------------------------------------------

@dataclass
class Job:
    source: str  # the `source` value in the annotations
    path: Path  # the file to read
    out: Path  # the file to write
    media: str  # image | video


def _media_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for n in sorted(names):
            if media_kind(n):
                found.append(Path(root) / n)
    return found


def _out_name(path: Path, media: str) -> str:
    """The rendered copy's name: videos as .mp4; photos in their own format where Pillow
    writes it, else as .jpg (HEIC, or a file without an extension)."""
    if media == "video":
        return path.stem + ".mp4" if path.suffix.lower() != ".mp4" else path.name
    writes = Image.registered_extensions().get(path.suffix.lower()) in Image.SAVE
    return path.name if writes else path.stem + ".jpg"


def plan(table: pa.Table, annotations: str, source: str | None, output: str,
         overwrite: bool = False) -> tuple[list[Job], list[str]]:
    """Jobs for the sources to render and the annotated sources that were not found.

    ``source``: a file, a folder (matched against the rows' ``source``), or None (the paths the
    annotations name). Checks everything before any work; raises :class:`VizError`.
    """
    sources = sources_of(table)
    if not sources:
        raise VizError(f"{annotations} has no rows, so nothing to render")
    media = {s: m for s, m in zip(table.column("source").to_pylist(),
                                  table.column("media").to_pylist(), strict=True)}
    found: dict[str, Path] = {}
    missing: list[str] = []
    root: Path | None = None
    if source is not None and Path(source).is_dir():
        root = Path(source)
        files = _media_files(root)
        by_name: dict[str, list[Path]] = {}
        for f in files:
            by_name.setdefault(f.name, []).append(f)
        for s in sources:
            cands = by_name.get(Path(s).name, [])
            if not cands:
                missing.append(s)
                continue
            try:
                found[s] = cands[0] if len(cands) == 1 else Path(
                    match_source([str(c) for c in cands], s, str(root)))
            except VizError:
                raise VizError(f"{s} matches several files in {root}: "
                               f"{', '.join(str(c) for c in cands[:4])}") from None
        if not found:
            raise VizError(f"none of the {len(sources)} annotated sources is in {root} "
                           f"(e.g. {sources[0]})")
        claimed: dict[Path, str] = {}
        for s, f in found.items():
            if f in claimed:
                raise VizError(f"{f} matches two annotated sources: {claimed[f]} and {s}")
            claimed[f] = s
    elif source is not None:
        p = Path(source)
        if not p.exists():
            raise VizError(f"--source {source}: no such file or folder")
        s = match_source(sources, p, annotations)
        found[s] = p
    else:
        for s in sources:
            if Path(s).is_file():
                found[s] = Path(s)
            else:
                missing.append(s)
        if not found:
            raise VizError(f"source not found: {sources[0]} (the path recorded in "
                           f"{annotations}); give --source FILE or --source FOLDER")
        if len(found) > 1:
            try:
                root = Path(os.path.commonpath([os.path.abspath(p.parent)
                                                for p in found.values()]))
            except ValueError:  # different drives
                root = None

    out = Path(output)
    as_folder = root is not None or len(found) > 1 or output.endswith(("/", os.sep)) \
        or out.is_dir()
    if as_folder and out.exists() and not out.is_dir():
        raise VizError(f"-o {output}: rendering {len(found)} sources needs a folder, and this "
                       "is a file")
    jobs = []
    for s, p in found.items():
        m = media[s] if media[s] in ("image", "video") else (media_kind(str(p)) or "image")
        if as_folder:
            if root is not None:
                rel = Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).parent
                target = out / rel / _out_name(p, m)
            else:
                target = out / _out_name(p, m)
        else:
            target = out
            _check_extension(target, m)
        jobs.append(Job(s, p, target, m))
    _check_outputs(jobs, overwrite)
    return jobs, missing


def _check_extension(target: Path, media: str) -> None:
    ext = target.suffix.lower()
    if media == "video":
        if ext not in VIDEO_OUT_EXTS:
            raise VizError(f"-o {target}: a rendered video is H.264 MP4; use a name ending in "
                           ".mp4")
    elif ext not in Image.registered_extensions():
        raise VizError(f"-o {target}: cannot tell the image format from {ext or 'no extension'!r}"
                       " (use .jpg or .png)")


def _check_outputs(jobs: list[Job], overwrite: bool) -> None:
    seen: dict[Path, Path] = {}
    for j in jobs:
        key = Path(os.path.abspath(j.out))
        if key in seen:
            raise VizError(f"{seen[key]} and {j.path} would both be written to {j.out}")
        seen[key] = j.path
        if key == Path(os.path.abspath(j.path)) or (
                j.out.exists() and os.path.samefile(j.out, j.path)):
            raise VizError(f"refusing to write over the source {j.path}; choose another -o")
        if j.out.is_dir():
            raise VizError(f"{j.out} is a folder")
        if j.out.exists() and not overwrite:
            raise VizError(f"{j.out} exists (use --overwrite to replace it)")


# --- rendering ------------------------------------------------------------------------------

def _rows_of(table: pa.Table, source: str) -> pa.Table:
    return table.filter(pc.equal(table.column("source"), source))


def _faces_by_frame(rows: pa.Table) -> dict[int, list[dict]]:
    """frame_index -> the faces drawn there ([] for --keep-empty rows: sampled, no face)."""
    out: dict[int, list[dict]] = {}
    for r in rows.select(list(_FACE_COLUMNS)).to_pylist():
        faces = out.setdefault(int(r["frame_index"]), [])
        if r["face_index"] is not None:
            faces.append(r)
    return out


def _annotated_size(rows: pa.Table) -> tuple[int, int]:
    return int(rows.column("frame_width")[0].as_py()), int(rows.column("frame_height")[0].as_py())


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.stem}.cage-tmp-{os.getpid()}{target.suffix}")


def render_image(path: Path, rows: pa.Table, out: Path) -> None:
    from ..annotation.io.decode import DecodeError, load_image

    try:
        image = Image.fromarray(load_image(str(path)))
    except DecodeError as e:
        raise VizError(f"{path}: {e}", 1) from None
    want = _annotated_size(rows)
    if image.size != want:
        raise VizError(f"{path} is {image.size[0]}x{image.size[1]} but was annotated at "
                       f"{want[0]}x{want[1]}: not the annotated file?", 1)
    faces = [f for fs in _faces_by_frame(rows).values() for f in fs]
    draw_faces(image, faces)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out)
    try:
        fmt = Image.registered_extensions().get(out.suffix.lower())
        kwargs = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
        image.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _sampled_frames(path: Path, run_info: list[dict] | None) -> set[int] | None:
    """The frame indices `cage annotate` sampled, recomputed from the run's sampling options
    (None if unknown)."""
    if not run_info:
        return None
    samplings = {repr((r.get("options") or {}).get("sampling")) for r in run_info}
    sampling = (run_info[0].get("options") or {}).get("sampling")
    if len(samplings) != 1 or not isinstance(sampling, dict):
        return None
    try:
        from ..annotation.io.decode import Sampling, sample_indices, video_index

        ts, _ = video_index(str(path))  # the timestamps annotate sampled from
        return set(sample_indices(ts, Sampling(**sampling)).tolist())
    except Exception:  # noqa: BLE001 - only a refinement; fall back to the rows
        return None


def render_video(path: Path, rows: pa.Table, out: Path, hold: float = DEFAULT_HOLD,
                 run_info: list[dict] | None = None,
                 on_frame: Callable[[int, int], None] | None = None) -> dict:
    """Re-encode ``path`` with the faces drawn on; returns {"frames", "annotated", "audio"}."""
    import av

    by_frame = _faces_by_frame(rows)
    sampled = _sampled_frames(path, run_info)
    sampled = set(by_frame) if sampled is None else sampled | set(by_frame)
    want = _annotated_size(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out)
    stats = {"frames": 0, "annotated": 0, "audio": None}
    try:
        try:
            inp = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise VizError(f"{path}: cannot open video ({e})", 1) from None
        with inp:
            if not inp.streams.video:
                raise VizError(f"{path}: no video stream", 1)
            ivs = inp.streams.video[0]
            ivs.thread_type = "AUTO"
            w, h = ivs.codec_context.width, ivs.codec_context.height
            if (w, h) != want:
                raise VizError(f"{path} is {w}x{h} but was annotated at {want[0]}x{want[1]}: "
                               "not the annotated file?", 1)
            tb = ivs.time_base
            rate = ivs.average_rate or ivs.guessed_rate or 25
            step = max(1, round(1 / (rate * tb))) if tb else 1
            end = ivs.start_time + ivs.duration if ivs.duration and ivs.start_time is not None \
                else None
            total = ivs.frames or 0
            with av.open(str(tmp), "w", format="mp4") as outc:
                ovs = outc.add_stream("libx264", rate=rate)
                ovs.width, ovs.height = w, h
                ovs.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
                ovs.time_base = tb
                ovs.codec_context.time_base = tb
                ovs.options = {"crf": "18", "preset": "veryfast"}
                ias = inp.streams.audio[0] if inp.streams.audio else None
                oas = None
                if ias is not None and ias.codec_context.name in MP4_AUDIO:
                    oas = outc.add_stream_from_template(ias)
                    stats["audio"] = ias.codec_context.name
                elif ias is not None:
                    stats["audio"] = f"dropped ({ias.codec_context.name} is not copied to MP4)"
                durations: dict[int, int] = {}

                def mux(frame):
                    for packet in ovs.encode(frame):
                        if packet.pts in durations:
                            packet.duration = durations.pop(packet.pts)
                        outc.mux(packet)

                pending = None  # a frame waits for the next one to know its duration
                last_pts = None
                held: tuple[float, list[dict]] | None = None  # (time, faces) last sampled
                index = 0
                for packet in inp.demux(*([ivs, ias] if oas else [ivs])):
                    if packet.stream.type == "audio":
                        if packet.dts is not None:
                            packet.stream = oas
                            outc.mux(packet)
                        continue
                    for frame in packet.decode():
                        pts = frame.pts
                        if pts is None or (last_pts is not None and pts <= last_pts):
                            pts = 0 if last_pts is None else last_pts + step
                        t = float(pts * tb) if tb else index / float(rate)
                        if index in sampled:
                            held = (t, by_frame.get(index, []))
                        faces = held[1] if held and (index in sampled or t - held[0] <= hold
                                                     + 1e-6) else []
                        if faces:
                            image = frame.to_image()
                            draw_faces(image, faces)
                            new = av.VideoFrame.from_image(image)
                            stats["annotated"] += 1
                        else:
                            new = frame
                        new.pts = pts
                        new.time_base = tb
                        new.pict_type = av.video.frame.PictureType.NONE  # x264 picks types
                        if pending is not None:
                            durations[pending.pts] = pts - pending.pts
                            mux(pending)
                        pending, last_pts = new, pts
                        index += 1
                        if on_frame:
                            on_frame(index, total)
                if pending is not None:
                    durations[pending.pts] = (end - pending.pts) if end and end > pending.pts \
                        else step
                    mux(pending)
                mux(None)
                stats["frames"] = index
            if index == 0:
                raise VizError(f"{path}: no decodable video frames", 1)
        os.replace(tmp, out)
    except av.FFmpegError as e:
        raise VizError(f"{path}: video error ({e})", 1) from None
    finally:
        tmp.unlink(missing_ok=True)
    return stats


def render(annotations: str, source: str | None, output: str, overwrite: bool = False,
           hold: float = DEFAULT_HOLD, log: Callable[[str], None] | None = None,
           on_frame: Callable[[Job, int, int], None] | None = None) -> tuple[int, list[str]]:
    """Render every matched source; returns (number written, [failure messages]).

    Usage problems (unreadable annotations, source not found, outputs that exist) raise
    :class:`VizError` before anything is written.
    """
    if hold < 0:
        raise VizError("--hold must be 0 or more seconds")
    table, run_info = load_annotations(annotations)
    jobs, missing = plan(table, annotations, source, output, overwrite)
    say = log or (lambda _line: None)
    for s in missing:
        say(f"cage: note: not found, not rendered: {s}")
    done, failures = 0, []
    for job in jobs:
        rows = _rows_of(table, job.source)
        try:
            if job.media == "video":
                cb = (lambda i, n, j=job: on_frame(j, i, n)) if on_frame else None
                stats = render_video(job.path, rows, job.out, hold, run_info, cb)
                extra = f" ({stats['frames']} frames, {stats['annotated']} with faces"
                extra += f", audio: {stats['audio']})" if stats["audio"] else ")"
            else:
                render_image(job.path, rows, job.out)
                extra = ""
        except VizError as e:
            failures.append(str(e))
            say(f"cage: error: {e}")
            continue
        except OSError as e:
            failures.append(f"{job.out}: {e.strerror or e}")
            say(f"cage: error: cannot write {job.out}: {e.strerror or e}")
            continue
        done += 1
        say(f"rendered {job.path} -> {job.out}{extra}")
    return done, failures
