"""`cage review DATASET_DIR`: write ``DATASET_DIR/review.html``, a self-contained page to review
the machine labels of a `cage export` dataset by looking at the crops (docs/prelabel.md).

The page is ``review_page.html`` (next to this module) with the dataset's tiles filled in as
JSON: inline script and style, crops by their paths relative to the dataset folder, nothing
fetched from anywhere else. Its answers download as ``review-answers.csv`` (``image``,
``reviewed_label``), which :func:`cage_cli.export.review.apply_review` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..schema import EXPRESSIONS
from ..view.render import label_color_hex, track_color_hex
from .prelabel import MARKER, ExportError, _review_rows, read_manifest

PAGE = "review.html"
TEMPLATE = Path(__file__).with_name("review_page.html")
#: Manifest columns naming the person a face belongs to, best first: the run-wide ``person``
#: (`cage export --persons`), else the per-source ``person_id`` (`cage annotate --persons`).
PERSON_COLUMNS = ("person", "person_id")


def review_data(dataset: str | Path) -> dict:
    """What the page shows: one tile per manifest row, plus the labels and their colours."""
    d = Path(dataset)
    marker = d / MARKER
    if not marker.is_file():
        raise ExportError(f"{d}: not a `cage export` dataset (no {MARKER})")
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {marker}: {e}") from None
    _, rows = read_manifest(d)
    if not rows:
        raise ExportError(f"{d}: the manifest lists no crops")
    person_col = next((c for c in PERSON_COLUMNS if any(r.get(c) not in (None, "")
                                                        for r in rows)), None)
    tiles = []
    for r, rev in zip(rows, _review_rows(rows, d), strict=True):
        tiles.append({
            "image": r["image"], "split": r["split"], "source": r["source"],
            "video": r.get("media") == "video", "frame": r["frame_index"],
            "time": r["timestamp_s"], "face": r["face_index"], "track": r.get("track_id"),
            "person": None if person_col is None or r.get(person_col) in (None, "")
            else f"P{r[person_col]}",  # as cage render and cage plot label persons
            "machine": r["machine_label"], "p": _round(r["confidence"]),
            "runner": rev["runner_up"], "runner_p": _round(rev["runner_up_p"]),
            "probs": [_round(r.get(f"p_{e}")) for e in EXPRESSIONS],
            "label": r["label"], "human": r.get("label_source") == "human",
            "rejected": bool(r.get("rejected")),
        })
    # Answers are kept in the browser under a key of this export (a new export into the same
    # folder starts afresh; the same dataset zipped and moved keeps them).
    ident = hashlib.sha1(json.dumps([info.get("created"), info.get("annotations"),
                                     [t["image"] for t in tiles]]).encode()).hexdigest()[:16]
    tracks = sorted({t["track"] for t in tiles if t["track"] is not None})
    return {
        "dataset": d.resolve().name, "key": f"cage-review:{ident}", "tiles": tiles,
        "labels": list(EXPRESSIONS), "colors": [label_color_hex(e) for e in EXPRESSIONS],
        "track_colors": {str(t): track_color_hex(t) for t in tracks},
        "person_column": person_col,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def write_review_page(dataset: str | Path) -> Path:
    """Write ``review.html`` into the dataset folder (replacing an earlier one); its path."""
    data = review_data(dataset)
    # Inside <script>, "</" could end the element early: JSON allows "<\/" for it.
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = TEMPLATE.read_text(encoding="utf-8").replace("/*CAGE_DATA*/null", blob, 1)
    out = Path(dataset) / PAGE
    tmp = out.with_name(PAGE + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    return out
