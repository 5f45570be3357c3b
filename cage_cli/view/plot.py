"""`cage plot`: a figure of an annotation output (matplotlib, no display needed).

Panels (:func:`build_figure` returns the Figure, :func:`save_figure` writes PNG/SVG/PDF):

* circumplex: every face as a point at (valence, arousal), coloured by its label (grey for
  faces without one, from models without classes such as cage-maxvit-t-va), inside the
  unit circle, with the eight AffectNet class centroids (``cage_cli/data``) labelled;
* expression distribution: faces per label (classes the model lacks are left out);
* for each video source whose rows carry track ids: per-track timelines of the ``tracks``
  longest tracks (one line per track, in the track's `cage render` colour): valence, arousal,
  and a strip per track coloured by its label over time. A line breaks where its track
  misses more than one sampled frame. Rows with person ids (``cage annotate --persons``)
  get one line and strip per person instead (all of the person's tracks, ``P<id>``). Each
  strip starts with a thumbnail of the track's or person's best face (largest, most
  frontal: :func:`pick_thumbnails`), cut from the source when it is found;
* for each video source without track ids (outputs of a cage without tracking): a timeline
  of valence and arousal, and one of the top three class probabilities, over
  ``timestamp_s``. A frame with several faces shows their mean (the shaded band is the range
  over the faces).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import EXPRESSIONS
from .summary import (
    VizError,
    has_person_ids,
    has_track_ids,
    longest_tracks,
    match_source,
    person_stats,
    sources_of,
    track_stats,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

FORMATS = (".png", ".svg", ".pdf")
#: At most this many video timelines unless one --source is picked.
MAX_TIMELINES = 6
TOP_K = 3
#: Per-track timelines: the longest this many tracks of each video (``cage plot --tracks``).
DEFAULT_TRACKS = 5
#: Thumbnails: cut at this many pixels, drawn this many points high.
THUMB_PX = 96
THUMB_PT = 30.0
#: Label offsets (points) and alignment for the centroids that sit close together.
_CENTROID_LABEL = {"contempt": (-6, 4, "right"), "anger": (6, -9, "left"),
                   "disgust": (-6, -10, "right")}


def _color(label: str) -> str:
    from .render import label_color_hex

    return label_color_hex(label)


def _track_color(track_id: int) -> str:
    from .render import track_color_hex

    return track_color_hex(track_id)


def _faces(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table.column("face_index")))


def select_source(table: pa.Table, source: str | None, what: str = "") -> pa.Table:
    """Rows of one source (matched like `cage render --source`), or all rows for None."""
    if source is None:
        return table
    s = match_source(sources_of(table), source, what)
    return table.filter(pc.equal(table.column("source"), s))


def _present_classes(table: pa.Table) -> list[str]:
    """Classes the model has (a probability column that is not all null)."""
    if table.num_rows == 0:
        return list(EXPRESSIONS)
    present = [e for e in EXPRESSIONS
               if table.column(f"p_{e}").null_count < table.num_rows]
    labels = set(table.column("label").drop_null().to_pylist())
    return [e for e in EXPRESSIONS if e in present or e in labels] or list(EXPRESSIONS)


def video_sources(table: pa.Table) -> list[str]:
    media = table.column("media")
    return sources_of(table.filter(pc.equal(media, "video")))


def _lanes_of(rows: pa.Table) -> tuple[str, list[dict]] | None:
    """How one video's timelines are drawn: ("person_id", :func:`person_stats`) when its rows
    carry person ids, ("track_id", :func:`track_stats`) when they carry track ids, else
    None."""
    if has_person_ids(rows):
        return "person_id", person_stats(rows)
    if has_track_ids(rows):
        return "track_id", track_stats(rows)
    return None


def build_figure(table: pa.Table, title: str | None = None,
                 max_timelines: int = MAX_TIMELINES, tracks: int = DEFAULT_TRACKS,
                 roots: list[Path] | None = None, thumbnails: bool = True,
                 log: Callable[[str], None] | None = None) -> Figure:
    """The figure: circumplex and distribution on top, then per video source either the
    timelines of its ``tracks`` longest persons (rows with person ids) or tracks (rows with
    track ids): a valence and an arousal panel, and a label strip below them, each strip
    with a face thumbnail; or two panels that average the faces of each frame (rows without
    track ids). Thumbnails are cut from each source, found as recorded or relative to one
    of ``roots`` (default: the current folder); ``log`` hears about sources not found."""
    from matplotlib.figure import Figure

    faces = _faces(table)
    videos = video_sources(table)[:max_timelines]
    per_video = [faces.filter(pc.equal(faces.column("source"), s)) for s in videos]
    lanes = [_lanes_of(rows) if tracks > 0 else None for rows in per_video]
    thumbs: list[dict[int, np.ndarray]] = []
    for s, rows, ln in zip(videos, per_video, lanes, strict=True):
        if ln is None or not thumbnails:
            thumbs.append({})
            continue
        key, st = ln
        shown = [k[key] for k in longest_tracks(st, tracks, key)]
        picks = pick_thumbnails(rows, key)
        thumbs.append(cut_thumbnails(s, "video", {i: picks[i] for i in shown},
                                     roots or [Path.cwd()], log))
    heights = [5.2]
    for ln, th in zip(lanes, thumbs, strict=True):
        heights.append(3.2)
        if ln is not None:
            heights.append(0.9 + (0.5 if th else 0.32) * min(tracks, len(ln[1])))
    fig = Figure(figsize=(12, sum(heights)), layout="constrained")
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
    _circumplex(fig.add_subplot(grid[0, 0]), faces)
    _distribution(fig.add_subplot(grid[0, 1]), faces, _present_classes(faces))
    row = 1
    for s, rows, ln, th in zip(videos, per_video, lanes, thumbs, strict=True):
        if ln is not None:
            _track_timelines(fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1]),
                             fig.add_subplot(grid[row + 1, :]), rows, s, ln[1], tracks,
                             ln[0], th)
            row += 2
        else:
            _timelines(fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1]), rows, s)
            row += 1
    if title:
        fig.suptitle(title)
    return fig


def _circumplex(ax, faces: pa.Table) -> None:
    from matplotlib.patches import Circle

    from ..models.va import centroids

    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.5", lw=1))
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    v = np.asarray(faces.column("valence").to_pylist(), dtype=float)
    a = np.asarray(faces.column("arousal").to_pylist(), dtype=float)
    labels = faces.column("label").to_pylist()
    alpha = 0.85 if len(v) <= 200 else max(0.15, 0.85 * math.sqrt(200 / len(v)))
    for e in EXPRESSIONS:
        m = np.array([x == e for x in labels], dtype=bool)
        if m.any():
            ax.scatter(v[m], a[m], s=28, color=_color(e), alpha=alpha, edgecolors="0.2",
                       linewidths=0.4, label=f"{e} ({int(m.sum())})", zorder=3)
    m = np.array([x is None for x in labels], dtype=bool)  # models without classes
    if m.any():
        ax.scatter(v[m], a[m], s=28, color="0.55", alpha=alpha, edgecolors="0.2",
                   linewidths=0.4, label=f"no label ({int(m.sum())})", zorder=3)
    for e, (cv, ca) in zip(EXPRESSIONS, centroids(), strict=True):
        ax.scatter([cv], [ca], marker="D", s=46, color=_color(e), edgecolors="black",
                   linewidths=1.0, zorder=4)
        dx, dy, ha = _CENTROID_LABEL.get(e, (5, 4, "left"))
        ax.annotate(e, (cv, ca), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                    ha=ha, zorder=5)
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    ax.set_title(f"valence / arousal ({faces.num_rows} faces; \u25c6 AffectNet class means)")
    if faces.num_rows:
        ax.legend(loc="lower left", fontsize=7, framealpha=0.8, title="label", title_fontsize=7)
    else:
        ax.text(0, -0.5, "no faces", ha="center", color="0.4")


def _distribution(ax, faces: pa.Table, classes: list[str]) -> None:
    labels = faces.column("label").to_pylist()
    counts = [sum(1 for x in labels if x == e) for e in classes]
    bars = ax.bar(range(len(classes)), counts, color=[_color(e) for e in classes],
                  edgecolor="0.2", linewidth=0.5)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    total = max(1, sum(counts))
    for b, c in zip(bars, counts, strict=True):
        if c:
            ax.annotate(f"{c}\n{c / total:.0%}", (b.get_x() + b.get_width() / 2, c),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7)
    ax.set_ylim(0, max(counts + [1]) * 1.25)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("faces")
    ax.set_title(f"expression distribution ({faces.num_rows} faces)")


def _per_frame(rows: pa.Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Time of each frame and, per column, (mean, min, max) over the frame's faces."""
    idx = np.asarray(rows.column("frame_index").to_pylist(), dtype=np.int64)
    t = np.asarray(rows.column("timestamp_s").to_pylist(), dtype=float)
    frames, inverse = np.unique(idx, return_inverse=True)
    times = np.full(len(frames), np.nan)
    times[inverse] = t
    cols = ["valence", "arousal"] + [f"p_{e}" for e in EXPRESSIONS]
    out = {}
    for c in cols:
        x = np.asarray(rows.column(c).to_pylist(), dtype=float)
        s = np.zeros(len(frames))
        n = np.zeros(len(frames))
        lo = np.full(len(frames), np.inf)
        hi = np.full(len(frames), -np.inf)
        ok = ~np.isnan(x)
        np.add.at(s, inverse[ok], x[ok])
        np.add.at(n, inverse[ok], 1)
        np.minimum.at(lo, inverse[ok], x[ok])
        np.maximum.at(hi, inverse[ok], x[ok])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        out[c] = np.stack([mean, np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)])
    order = np.argsort(times, kind="stable")
    return times[order], {c: v[:, order] for c, v in out.items()}


def _timelines(ax_va, ax_p, rows: pa.Table, source: str) -> None:
    name = Path(source).name
    times, series = _per_frame(rows)
    marker = "." if len(times) <= 80 else None
    multi = rows.num_rows > len(times)
    for col, color in (("valence", "tab:blue"), ("arousal", "tab:red")):
        mean, lo, hi = series[col]
        ax_va.plot(times, mean, color=color, marker=marker, lw=1.3, label=col)
        if multi:
            ax_va.fill_between(times, lo, hi, color=color, alpha=0.15, lw=0)
    ax_va.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax_va.set_ylim(-1.05, 1.05)
    ax_va.set_xlabel("time (s)")
    ax_va.set_ylabel("valence / arousal")
    ax_va.set_title(f"{name}: valence & arousal" + (" (mean over faces)" if multi else ""))
    ax_va.legend(loc="best", fontsize=8)
    means = {}
    for e in EXPRESSIONS:
        p = series[f"p_{e}"][0]
        if np.isfinite(p).any():
            means[e] = float(np.nanmean(p))
    top = sorted(means, key=lambda e: -means[e])
    for e in top[:TOP_K]:
        ax_p.plot(times, series[f"p_{e}"][0], color=_color(e), marker=marker, lw=1.3, label=e)
    ax_p.set_ylim(0, 1.02)
    ax_p.set_xlabel("time (s)")
    ax_p.set_ylabel("probability")
    ax_p.set_title(f"{name}: top {min(TOP_K, len(top))} class probabilities")
    if top:
        ax_p.legend(loc="best", fontsize=8)
    if not len(times):
        for ax in (ax_va, ax_p):
            ax.text(0.5, 0.5, "no faces", ha="center", transform=ax.transAxes, color="0.4")


def _step(times: np.ndarray) -> float:
    """The usual time between two sampled frames of a video (median over its faces' frames)."""
    t = np.unique(times[np.isfinite(times)])
    return float(np.median(np.diff(t))) if len(t) > 1 else 1.0


def _track_series(rows: pa.Table, track_id: int, step: float, key: str = "track_id"
                  ) -> dict[str, np.ndarray]:
    """Time-sorted ``t``, ``valence``, ``arousal`` (NaN-separated where the track misses more
    than one sampled frame, so the line breaks there) and ``label`` of one track (or person,
    ``key="person_id"``)."""
    one = rows.filter(pc.equal(rows.column(key), track_id))
    t = np.asarray(one.column("timestamp_s").to_pylist(), dtype=float)
    order = np.argsort(t, kind="stable")
    t = t[order]
    cols = {c: np.asarray(one.column(c).to_pylist(), dtype=float)[order]
            for c in ("valence", "arousal")}
    labels = np.asarray(one.column("label").to_pylist(), dtype=object)[order]
    gaps = np.flatnonzero(np.diff(t) > 1.5 * step) + 1
    return {"t": np.insert(t, gaps, np.nan),
            **{c: np.insert(v, gaps, np.nan) for c, v in cols.items()},
            "label": labels, "t_raw": t}


def _label_runs(t: np.ndarray, labels: np.ndarray, step: float) -> list[tuple[str, float, float]]:
    """(label, start, width) for each run of one label on consecutive sampled frames."""
    runs: list[tuple[str, float, float]] = []
    start = 0
    for i in range(1, len(t) + 1):
        if i == len(t) or labels[i] != labels[start] or t[i] - t[i - 1] > 1.5 * step:
            runs.append((labels[start], t[start], t[i - 1] - t[start] + step))
            start = i
    return runs


def _lane_name(key: str, i: int) -> str:
    return f"P{i}" if key == "person_id" else f"#{i}"


def _track_timelines(ax_v, ax_a, ax_l, rows: pa.Table, source: str, stats: list[dict],
                     n: int, key: str = "track_id",
                     thumbs: dict[int, np.ndarray] | None = None) -> None:
    """Valence and arousal (one line per track) and a label strip per track, for the ``n``
    longest of the tracks in ``stats`` (:func:`track_stats` of ``rows``); or per person with
    ``key="person_id"`` (:func:`person_stats`). ``thumbs``: a face per id, drawn at the
    start of its strip."""
    name = Path(source).name
    what = "person" if key == "person_id" else "track"
    shown = longest_tracks(stats, n, key)
    step = _step(np.asarray(rows.column("timestamp_s").to_pylist(), dtype=float))
    which = f"{len(shown)} longest of {len(stats)} {what}s" if len(shown) < len(stats) \
        else f"{len(stats)} {what}{'s' if len(stats) != 1 else ''}"
    seen: set[str] = set()
    marker = "." if max((k["frames"] for k in shown), default=0) <= 80 else None
    for lane, k in enumerate(shown):
        tid = k[key]
        series = _track_series(rows, tid, step, key)
        extra = f", {k['tracks']} tracks" if key == "person_id" and k["tracks"] > 1 else ""
        for ax, col in ((ax_v, "valence"), (ax_a, "arousal")):
            ax.plot(series["t"], series[col], color=_track_color(tid), marker=marker, lw=1.3,
                    ms=4, label=f"{_lane_name(key, tid)} ({k['frames']} fr.{extra})")
        by_label: dict[str, list[tuple[float, float]]] = {}
        for label, start, width in _label_runs(series["t_raw"], series["label"], step):
            by_label.setdefault(label, []).append((start, width))
        for label, spans in by_label.items():  # one bar collection per track and label
            ax_l.broken_barh(spans, (lane - 0.4, 0.8), color=_color(label),
                             label=None if label in seen else label)
            seen.add(label)
    for ax, col in ((ax_v, "valence"), (ax_a, "arousal")):
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(col)
        ax.set_title(f"{name}: {col} per {what} ({which})")
        _legend(ax, what, thumbs or {}, [k[key] for k in shown])
    ax_l.set_yticks(range(len(shown)), [_lane_name(key, k[key]) for k in shown])
    for tick, k in zip(ax_l.get_yticklabels(), shown, strict=True):
        tick.set_color(_track_color(k[key]))
        tick.set_fontweight("bold")
    ax_l.set_ylim(len(shown) - 0.5, -0.5)
    ax_l.set_xlim(ax_v.get_xlim())
    ax_l.set_xlabel("time (s)")
    ax_l.set_title(f"{name}: label per {what}")
    if thumbs:
        _draw_thumbnails(ax_l, [(lane, k[key], thumbs.get(k[key]))
                                for lane, k in enumerate(shown)])
    order = {e: i for i, e in enumerate(EXPRESSIONS)}
    handles, labels = ax_l.get_legend_handles_labels()
    pairs = sorted(zip(labels, handles, strict=True), key=lambda p: order.get(p[0], 99))
    if pairs:
        ax_l.legend([h for _, h in pairs], [lb for lb, _ in pairs], loc="upper left",
                    bbox_to_anchor=(1.0, 1.0), fontsize=7, title="label", title_fontsize=7)


def pick_thumbnails(rows: pa.Table, key: str) -> dict[int, dict]:
    """Per id in column ``key`` (``track_id`` or ``person_id``): the row of its best face for
    a thumbnail: highest landmark quality (size and frontality,
    cage_cli.annotation.identity.embed.face_quality) times detector score, then the larger box, then
    the earlier frame."""
    from ..annotation.identity.embed import face_quality
    from ..schema import LANDMARK_COLUMNS

    faces = _faces(rows).filter(pc.is_valid(_faces(rows).column(key)))
    faces = faces.filter(pc.is_valid(faces.column("x1")))
    if not faces.num_rows:
        return {}
    marks = np.column_stack([np.asarray(faces.column(c).to_pylist(), dtype=float)
                             for c in LANDMARK_COLUMNS]).reshape(-1, 5, 2)
    score = np.asarray(faces.column("det_score").fill_null(1.0).to_pylist(), dtype=float)
    quality = face_quality(marks) * score
    cols = faces.select([key, "frame_index", "face_index", "x1", "y1", "x2", "y2"]).to_pylist()
    best: dict[int, tuple[tuple, dict]] = {}
    for r, q, sc in zip(cols, quality.tolist(), score.tolist(), strict=True):
        side = min(r["x2"] - r["x1"], r["y2"] - r["y1"]) * sc
        rank = (q, side, -r["frame_index"])
        if r[key] not in best or rank > best[r[key]][0]:
            best[r[key]] = (rank, r)
    return {i: r for i, (_, r) in best.items()}


def cut_thumbnails(source: str, media: str, picks: dict[int, dict], roots: list[Path],
                   log: Callable[[str], None] | None = None) -> dict[int, np.ndarray]:
    """THUMB_PX square crops (margin 0.15) of the picked rows, cut from ``source`` (as
    recorded, or relative to one of ``roots``); {} with a note to ``log`` when the source is
    not found or cannot be read."""
    from ..annotation.io.decode import DecodeError, load_image, video_frames_at
    from ..export.prelabel import crop_region, crop_square

    if not picks:
        return {}
    path = Path(source)
    if not path.is_absolute():
        path = next((r / path for r in roots if (r / path).is_file()), path)
    if not path.is_file():
        if log:
            log(f"no thumbnails for {source}: not found (give --root, the folder relative "
                "sources are in)")
        return {}
    by_frame: dict[int, list[int]] = {}
    for i, r in picks.items():
        by_frame.setdefault(r["frame_index"], []).append(i)
    out: dict[int, np.ndarray] = {}
    try:
        frames = [(0, load_image(str(path)))] if media == "image" else \
            ((f.index, f.image) for f in video_frames_at(str(path), sorted(by_frame)))
        for index, image in frames:
            for i in by_frame.get(index, []):
                r = picks[i]
                region = crop_region((r["x1"], r["y1"], r["x2"], r["y2"]), 0.15)
                out[i] = crop_square(image, region, THUMB_PX)
    except (DecodeError, OSError) as e:
        if log:
            log(f"no thumbnails for {source}: {e}")
        return {}
    return out


def _legend(ax, what: str, thumbs: dict[int, np.ndarray], ids: list[int]) -> None:
    """The lines' legend; with thumbnails, each entry's line sample is followed by its face."""
    if not thumbs:
        ax.legend(loc="best", fontsize=7, title=what, title_fontsize=7)
        return
    from matplotlib.legend_handler import HandlerLine2D

    class WithFace(HandlerLine2D):
        def __init__(self, image: np.ndarray):
            super().__init__()
            self.image = image

        def create_artists(self, legend, orig_handle, xdescent, ydescent, width, height,
                           fontsize, trans):
            from matplotlib.image import BboxImage
            from matplotlib.transforms import Bbox, TransformedBbox

            line_w = width - height - 2
            artists = super().create_artists(legend, orig_handle, xdescent, ydescent, line_w,
                                             height, fontsize, trans)
            box = Bbox.from_bounds(line_w + 2 - xdescent, -ydescent, height, height)
            return [*artists, BboxImage(TransformedBbox(box, trans), data=self.image)]

    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    handler = {ln: WithFace(thumbs[i]) for ln, i in zip(lines, ids, strict=True) if i in thumbs}
    ax.legend(loc="best", fontsize=7, title=what, title_fontsize=7, handler_map=handler,
              handlelength=4.2, handleheight=2.2, labelspacing=0.3)


def _draw_thumbnails(ax, lanes: list[tuple[int, int, np.ndarray | None]]) -> None:
    """Each lane's face just left of the strip (tick labels moved left of the faces), framed
    in the lane's colour."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    ax.tick_params(axis="y", pad=THUMB_PT + 6)
    for lane, i, image in lanes:
        if image is None:
            continue
        box = OffsetImage(image, zoom=THUMB_PT / image.shape[0])
        ab = AnnotationBbox(box, (0, lane), xycoords=("axes fraction", "data"),
                            xybox=(-3, 0), boxcoords="offset points", box_alignment=(1, 0.5),
                            pad=0.15, frameon=True, annotation_clip=False,
                            bboxprops={"edgecolor": _track_color(i), "linewidth": 2})
        ax.add_artist(ab)


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise VizError(f"-o {path}: the plot format comes from the extension: "
                       f"{', '.join(FORMATS)}")
    if p.is_dir():
        raise VizError(f"-o {path} is a folder")
    if p.exists() and not overwrite:
        raise VizError(f"{path} exists (use --overwrite to replace it)")
    return p


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write PNG (150 dpi), SVG or PDF, chosen by the extension (temporary name, then rename)."""
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.cage-tmp-{os.getpid()}{p.suffix}")
    try:
        fig.savefig(tmp, dpi=150, format=p.suffix.lower().lstrip("."),
                    metadata={"Software": "cage"} if p.suffix.lower() == ".png" else None)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
