"""`cage summary`: per-source counts and means of an annotation output, plus its failed files,
and for videos the tracks (``track_id``): frames, first/last time, dominant expression, mean
valence and arousal; and, for videos annotated with ``--persons``, the same per person
(``person_id``: the tracks of one person), with its tracks and time on screen.

Also the small helpers that `cage render` and `cage plot` share: :func:`load_annotations`
(read any `cage annotate` output and check that it is one) and :func:`match_source` (find the
annotated source that a path given by the user refers to).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..schema import EXPRESSIONS


class VizError(Exception):
    """A user-facing problem of `cage render`/`plot`/`summary` (message is one line)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def load_annotations(path: str | Path) -> tuple[pa.Table, list[dict] | None]:
    """The rows of any `cage annotate` output and its run records (None for JSONL/CSV).

    Raises :class:`VizError` for a missing file or one that is not an annotation output.
    """
    from ..annotation.io.read import location, read_annotations, read_run_info
    from ..annotation.io.write import OutputError

    try:
        p = location(path)
        table = read_annotations(p)
    except OutputError as e:
        raise VizError(str(e)) from None
    # read_annotations fills absent columns with nulls; a real output never has a null here.
    for col in ("source", "media", "frame_index", "frame_width", "frame_height"):
        if table.num_rows and table.column(col).null_count:
            raise VizError(f"{p}: not a cage annotation file (no {col!r} values)")
    try:
        info = read_run_info(p)
    except (OSError, ValueError, pa.ArrowException):
        info = []
    if not info and not p.is_dir() and p.suffix.lower() not in (".parquet", ".pq"):
        return table, None  # JSONL/CSV carry no run metadata
    return table, info


def sources_of(table: pa.Table) -> list[str]:
    """Distinct sources in order of first appearance."""
    return list(dict.fromkeys(table.column("source").to_pylist()))


def _tail_score(source: str, path: Path) -> int:
    """How well an annotated source names ``path``: a large number for the same file, else the
    number of trailing path components they share (0 = different names)."""
    s = Path(source)
    try:
        if s.exists() and path.exists() and os.path.samefile(s, path):
            return 1_000_000
    except OSError:
        pass
    a = Path(os.path.normpath(source)).parts
    b = Path(os.path.abspath(path)).parts
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def match_source(sources: list[str], wanted: str | Path, what: str = "") -> str:
    """The annotated source that ``wanted`` (a path given by the user) refers to.

    The same file wins; otherwise the source sharing the most trailing path components (at
    least the file name). Raises :class:`VizError` when none or several match equally.
    """
    if str(wanted) in sources:
        return str(wanted)
    scores = {s: _tail_score(s, Path(wanted)) for s in sources}
    best = max(scores.values(), default=0)
    if best == 0:
        listed = ", ".join(sources[:5]) + (f" (+{len(sources) - 5} more)" if len(sources) > 5
                                           else "")
        raise VizError(f"source not found in {what or 'the annotations'}: {wanted} (no row "
                       "names it: no face was found there, or it was not annotated; "
                       f"annotated sources: {listed or 'none'})")
    tied = [s for s, v in scores.items() if v == best]
    if len(tied) > 1:
        raise VizError(f"{wanted} matches several annotated sources ({', '.join(tied[:4])}); "
                       "give a longer path")
    return tied[0]


def _faces(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table.column("face_index")))


def _dominant(labels: list[str | None]) -> tuple[str | None, float | None]:
    """Most frequent label (ties: AffectNet order) and its share of the faces."""
    counts = Counter(x for x in labels if x is not None)
    if not counts:
        return None, None
    order = {e: i for i, e in enumerate(EXPRESSIONS)}
    label = min(counts, key=lambda k: (-counts[k], order.get(k, len(order)), k))
    return label, counts[label] / sum(counts.values())


def _mean(values: pa.ChunkedArray) -> float | None:
    m = pc.mean(values).as_py()
    return None if m is None or math.isnan(m) else round(float(m), 6)


def has_track_ids(rows: pa.Table) -> bool:
    """Whether any face row carries a ``track_id`` (outputs of a cage without tracking, and
    photos, have none)."""
    faces = _faces(rows)
    return faces.num_rows > faces.column("track_id").null_count


def track_stats(rows: pa.Table) -> list[dict[str, Any]]:
    """One dict per track among ``rows`` (the faces of one video), in ``track_id`` order:
    frames (distinct frames it is in), first/last timestamp, dominant expression (with its
    share of the track's faces), mean valence and arousal. Rows without a track id are left
    out."""
    faces = _faces(rows)
    cols = faces.select(["track_id", "frame_index", "timestamp_s", "label"]).to_pydict()
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(cols["track_id"]):
        if t is not None:
            groups.setdefault(t, []).append(i)
    return [{"track_id": t, **_group_stats(faces, cols, groups[t])} for t in sorted(groups)]


def _group_stats(faces: pa.Table, cols: dict[str, list], idx: list[int]) -> dict[str, Any]:
    """The stats of a track or person: the face rows ``idx`` of ``faces`` (``cols``: its
    columns as lists)."""
    times = [cols["timestamp_s"][i] for i in idx if cols["timestamp_s"][i] is not None]
    label, share = _dominant([cols["label"][i] for i in idx])
    take = pa.array(idx)
    return {
        "frames": len({cols["frame_index"][i] for i in idx}),
        "first_s": round(min(times), 6) if times else None,
        "last_s": round(max(times), 6) if times else None,
        "dominant_expression": label,
        "dominant_share": None if share is None else round(share, 6),
        "mean_valence": _mean(faces.column("valence").take(take)),
        "mean_arousal": _mean(faces.column("arousal").take(take)),
    }


def has_person_ids(rows: pa.Table) -> bool:
    """Whether any face row carries a ``person_id`` (``cage annotate --persons``)."""
    faces = _faces(rows)
    return faces.num_rows > faces.column("person_id").null_count


def frame_step(rows: pa.Table) -> float | None:
    """The usual time between two sampled frames of one video: the median step between its
    rows' distinct timestamps (None with fewer than two)."""
    t = sorted({x for x in rows.column("timestamp_s").to_pylist() if x is not None})
    if len(t) < 2:
        return None
    steps = sorted(b - a for a, b in zip(t[:-1], t[1:], strict=True))
    return steps[len(steps) // 2]


def person_stats(rows: pa.Table) -> list[dict[str, Any]]:
    """One dict per person among ``rows`` (the rows of one video), in ``person_id`` order:
    tracks (distinct track ids), frames (distinct frames the person is in), time on screen
    (frames x :func:`frame_step`, seconds), first/last timestamp, dominant expression (with
    its share), mean valence and arousal. Rows without a person id are left out."""
    faces = _faces(rows)
    step = frame_step(rows)
    cols = faces.select(["person_id", "track_id", "frame_index", "timestamp_s",
                         "label"]).to_pydict()
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(cols["person_id"]):
        if p is not None:
            groups.setdefault(p, []).append(i)
    out = []
    for p in sorted(groups):
        idx = groups[p]
        stats = _group_stats(faces, cols, idx)
        out.append({
            "person_id": p,
            "tracks": len({cols["track_id"][i] for i in idx} - {None}),
            "frames": stats["frames"],
            "time_on_screen_s": None if step is None else round(stats["frames"] * step, 6),
            **stats,
        })
    return out


def longest_tracks(tracks: list[dict[str, Any]], n: int, key: str = "track_id"
                   ) -> list[dict[str, Any]]:
    """The ``n`` tracks (or persons, ``key="person_id"``) with the most frames (ties: the
    earlier id), in id order."""
    best = sorted(tracks, key=lambda t: (-t["frames"], t[key]))[:max(0, n)]
    return sorted(best, key=lambda t: t[key])


def _stats(source_rows: pa.Table) -> dict[str, Any]:
    faces = _faces(source_rows)
    frames = pc.count_distinct(faces.column("frame_index")).as_py() if faces.num_rows else 0
    label, share = _dominant(faces.column("label").to_pylist())
    return {
        "frames_with_faces": int(frames),
        "faces": faces.num_rows,
        "dominant_expression": label,
        "dominant_share": None if share is None else round(share, 6),
        "mean_valence": _mean(faces.column("valence")),
        "mean_arousal": _mean(faces.column("arousal")),
    }


def failed_files(run_info: list[dict] | None) -> list[dict] | None:
    """Files that failed in the run(s), de-duplicated; None when the output has no metadata."""
    if run_info is None:
        return None
    seen: dict[str, str] = {}
    for record in run_info:
        for e in record.get("errors") or []:
            seen.setdefault(str(e.get("source")), str(e.get("error")))
    return [{"source": s, "error": e} for s, e in seen.items()]


def summarize(table: pa.Table, run_info: list[dict] | None = None) -> dict[str, Any]:
    """Per-source and total counts: frames with faces, faces, dominant expression (with its
    share of the faces), mean valence and arousal; plus the failed files of the run.

    ``tracks`` per source: the :func:`track_stats` of a video whose rows carry track ids,
    None for photos and for videos without them (outputs of a cage without tracking).
    ``persons`` per source: the :func:`person_stats` of a video whose rows carry person ids
    (``--persons``), else None (photos: a person is a face there)."""
    per_source = []
    src = table.column("source")
    for s in sources_of(table):
        rows = table.filter(pc.equal(src, s))
        media = rows.column("media")[0].as_py()
        tracks = track_stats(rows) if media == "video" and has_track_ids(rows) else None
        persons = person_stats(rows) if media == "video" and has_person_ids(rows) else None
        per_source.append({"source": s, "media": media, **_stats(rows), "tracks": tracks,
                           "persons": persons})
    total = _stats(table)
    total["frames_with_faces"] = sum(r["frames_with_faces"] for r in per_source)
    tracked = [r["tracks"] for r in per_source if r["tracks"] is not None]
    total["tracks"] = sum(len(t) for t in tracked) if tracked else None
    with_persons = [r["persons"] for r in per_source if r["persons"] is not None]
    total["persons"] = sum(len(p) for p in with_persons) if with_persons else None
    models = sorted({m for m in table.column("model").to_pylist() if m})
    if not models and run_info:
        models = sorted({r["model"] for r in run_info if r.get("model")})
    return {"sources": per_source, "total": {"sources": len(per_source), **total},
            "models": models, "failed": failed_files(run_info)}


def _common_parent(paths: list[str]) -> str | None:
    """The folder all ``paths`` are in (for shorter table rows), or None."""
    try:
        parent = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    except ValueError:  # absolute and relative paths mixed
        return None
    return parent or None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _dom(r: dict) -> str:
    if r["dominant_expression"] is None:
        return "-"
    return f"{r['dominant_expression']} ({r['dominant_share']:.0%})"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_summary(summary: dict[str, Any], console, title: str = "cage summary",
                  max_tracks: int = 10) -> None:
    """The summary as rich tables: one row per source and a total, then per video its
    ``max_tracks`` longest persons (when the rows carry person ids) and tracks (when they
    carry track ids), then the failed files."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def group_table(title: str, columns: tuple[str, ...], cells: list[list[str]],
                    groups: list[dict]) -> Table:
        """A video's persons or tracks: their own columns, then expression and affect."""
        t = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
        for col in columns:
            t.add_column(col, justify="right")
        t.add_column("dominant\nexpression")
        t.add_column("mean\nvalence", justify="right")
        t.add_column("mean\narousal", justify="right")
        for row, k in zip(cells, groups, strict=True):
            t.add_row(*row, _dom(k), _fmt(k["mean_valence"]), _fmt(k["mean_arousal"]))
        return t

    names = [r["source"] for r in summary["sources"]]
    parent = _common_parent(names)
    caption = f"sources in {parent}" if parent else None
    tracked = summary["total"].get("tracks") is not None
    personal = summary["total"].get("persons") is not None
    table = Table(title=Text(title), title_justify="left", caption=caption and Text(caption),
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    table.add_column("source", overflow="fold")
    table.add_column("media")
    table.add_column("frames\nw/ faces", justify="right")
    table.add_column("faces", justify="right")
    if tracked:
        table.add_column("tracks", justify="right")
    if personal:
        table.add_column("persons", justify="right")
    table.add_column("dominant\nexpression")
    table.add_column("mean\nvalence", justify="right")
    table.add_column("mean\narousal", justify="right")

    def name_of(source: str) -> str:
        return os.path.relpath(source, parent) if parent else source

    def track_cell(tracks: list | int | None) -> list[str]:
        if not tracked:
            return []
        return ["-" if tracks is None else str(tracks if isinstance(tracks, int)
                                                else len(tracks))]

    def person_cell(persons: list | int | None) -> list[str]:
        if not personal:
            return []
        return ["-" if persons is None else str(persons if isinstance(persons, int)
                                                 else len(persons))]

    for r in summary["sources"]:
        table.add_row(Text(name_of(r["source"])), r["media"], str(r["frames_with_faces"]),
                      str(r["faces"]), *track_cell(r.get("tracks")),
                      *person_cell(r.get("persons")), _dom(r),
                      _fmt(r["mean_valence"]), _fmt(r["mean_arousal"]))
    t = summary["total"]
    table.add_section()
    table.add_row("total", "", str(t["frames_with_faces"]), str(t["faces"]),
                  *track_cell(t.get("tracks")), *person_cell(t.get("persons")), _dom(t),
                  _fmt(t["mean_valence"]),
                  _fmt(t["mean_arousal"]), style="bold")
    console.print(table)
    say = lambda line: console.print(line, highlight=False, markup=False)  # noqa: E731
    videos = [r for r in summary["sources"] if r["media"] == "video" and r["faces"]]
    for r in videos:
        persons = r.get("persons")
        if persons and max_tracks > 0:
            shown = longest_tracks(persons, max_tracks, "person_id")
            console.print(group_table(
                f"persons in {name_of(r['source'])}: {len(persons)}"
                + (f" (the {len(shown)} longest on screen)" if len(shown) < len(persons) else ""),
                ("person", "tracks", "frames", "on screen\n(s)", "first (s)", "last (s)"),
                [[str(k["person_id"]), str(k["tracks"]), str(k["frames"]),
                  _secs(k["time_on_screen_s"]), _secs(k["first_s"]), _secs(k["last_s"])]
                 for k in shown], shown))
        tracks = r.get("tracks")
        if tracks is None or max_tracks <= 0:
            continue
        shown = longest_tracks(tracks, max_tracks)
        console.print(group_table(
            f"tracks in {name_of(r['source'])}: {len(tracks)}"
            + (f" (the {len(shown)} longest)" if len(shown) < len(tracks) else ""),
            ("track", "frames", "first (s)", "last (s)"),
            [[str(k["track_id"]), str(k["frames"]), _secs(k["first_s"]), _secs(k["last_s"])]
             for k in shown], shown))
    untracked = [r for r in videos if r.get("tracks") is None]
    if untracked:
        say(f"tracks: not available for {len(untracked)} of {len(videos)} videos (their rows "
            "have no track_id: written by a cage without tracking)")
    if summary["models"]:
        say(f"model: {', '.join(summary['models'])}")
    failed = summary["failed"]
    if failed is None:
        say("failed files: unknown (JSONL/CSV outputs carry no run metadata; use a Parquet "
            "output to keep it)")
    elif not failed:
        say("failed files: none")
    else:
        ft = Table(title=f"failed files ({len(failed)})", title_justify="left")
        ft.add_column("source", overflow="fold")
        ft.add_column("error", overflow="fold")
        for f in failed:
            ft.add_row(Text(f["source"]), Text(f["error"]))
        console.print(ft)
