"""`cage export DATASET_DIR --apply-review SHEET`: fold a filled-in review sheet back into
an exported dataset (docs/prelabel.md).

The sheet is the one ``cage export --review-csv`` wrote (cage_cli/export/prelabel.py). Only the
manifest's label columns change; the labels CSVs are then rebuilt from the manifest.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..schema import EXPRESSIONS
from .prelabel import (
    MARKER,
    ExportError,
    canonical_class,
    read_manifest,
    write_labels,
    write_manifest,
)

#: What a reviewer may write in ``reviewed_label`` besides an expression (case-insensitive).
REJECT_WORDS = frozenset({"reject", "rejected", "drop", "discard", "x"})
ACCEPT_WORDS = frozenset({"ok", "accept", "yes", "y", "correct"})


@dataclass
class ReviewSummary:
    dataset: str
    rows: int = 0  # review rows read
    relabelled: int = 0  # given a label other than the machine's
    confirmed: int = 0  # ok, or the machine's label written out
    rejected: int = 0
    restored: int = 0  # earlier rejected, now given a label again
    unchanged: int = 0  # rows with an empty reviewed_label
    changed: int = 0  # crops whose label or rejection this sheet changed
    unanswered: int = 0  # crops of the dataset without an answer in this sheet
    splits: dict[str, int] = field(default_factory=dict)


def apply_review(review_csv: str | Path, dataset: str | Path) -> ReviewSummary:
    """Fold a filled-in review sheet back into a dataset.

    ``reviewed_label`` per row: empty = no change; an expression (name, alias or index 0-7) =
    that label (label_source=human); ``ok`` = the current label confirmed (label_source=human);
    ``reject`` = left out of the labels CSVs (the crop and its manifest row stay, marked
    rejected). Rows are matched by ``image`` (the crop's path in the dataset). Nothing is
    changed if any row is invalid.
    """
    d = Path(dataset)
    marker = d / MARKER
    if not marker.is_file():
        raise ExportError(f"{d}: not a `cage export` dataset (no {MARKER})")
    mpath, rows = read_manifest(d)
    by_image = {r["image"]: r for r in rows}
    rp = Path(review_csv)
    try:
        with open(rp, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            lines = list(reader)
    except FileNotFoundError:
        raise ExportError(f"review sheet not found: {rp}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read {rp}: {getattr(e, 'strerror', None) or e}") from None
    if "reviewed_label" not in header or not ({"image", "crop"} & set(header)):
        raise ExportError(f"{rp}: expected columns image (or crop) and reviewed_label "
                          f"(found: {', '.join(header) or 'nothing'})")
    decisions: dict[str, tuple[str, int | None, int]] = {}  # image -> (kind, class, line)
    unknown: list[str] = []
    for line, raw in enumerate(lines, start=2):
        r = {(k or "").strip(): (v or "") for k, v in raw.items()}
        key = _review_key(r, d)
        if key not in by_image:
            unknown.append(key or "(empty)")
            continue
        value = r.get("reviewed_label", "").strip()
        if not value:
            decision = ("none", None, line)
        elif value.lower() in REJECT_WORDS:
            decision = ("reject", None, line)
        elif value.lower() in ACCEPT_WORDS:
            decision = ("ok", None, line)
        else:
            c = canonical_class(value)
            if c is None:
                raise ExportError(f"{rp}:{line}: unknown reviewed_label {value!r} (use one of "
                                  f"{', '.join(EXPRESSIONS)}, ok, reject, or leave it empty)")
            decision = ("label", c, line)
        prev = decisions.get(key)
        if prev is not None and prev[0] != "none" and decision[0] != "none" \
                and prev[:2] != decision[:2]:
            raise ExportError(f"{rp}:{line}: {key} reviewed twice with different answers "
                              f"(also line {prev[2]})")
        if prev is None or decision[0] != "none":
            decisions[key] = decision
    if unknown:
        raise ExportError(f"{rp}: {len(unknown)} rows name crops that are not in {d}, e.g. "
                          f"{unknown[0]} (a sheet from another export?); nothing changed")
    s = ReviewSummary(dataset=str(d), rows=len(lines))
    for key, (kind, c, _line) in decisions.items():
        r = by_image[key]
        if kind == "none":
            s.unchanged += 1
            continue
        before = (r["label"], r["label_source"], r["rejected"])
        _decide(r, kind, c, s)
        s.changed += (r["label"], r["label_source"], r["rejected"]) != before
    s.unanswered = len(rows) - (len(decisions) - s.unchanged)
    info = json.loads(marker.read_text())
    splits = list(info.get("labels") or sorted({r["split"] for r in rows}))
    write_manifest(mpath, rows)
    s.splits = write_labels(d, rows, splits)
    info.setdefault("reviews", []).append({
        "sheet": str(rp.resolve()), "applied": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": s.rows, "relabelled": s.relabelled, "confirmed": s.confirmed,
        "rejected": s.rejected, "restored": s.restored, "changed": s.changed})
    info["counts"]["splits_after_review"] = s.splits
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, marker)
    return s


def _decide(r: dict, kind: str, c: int | None, s: ReviewSummary) -> None:
    """Apply one answer (reject | ok | label) to a manifest row, counting it in ``s``."""
    if kind == "reject":
        s.rejected += 1
        r["rejected"] = True
        return
    if r["rejected"]:
        s.restored += 1
    r["rejected"] = False
    if kind == "ok":
        s.confirmed += 1
    else:
        if EXPRESSIONS[c] != r["machine_label"]:
            s.relabelled += 1
        else:
            s.confirmed += 1
        r["label"] = EXPRESSIONS[c]
        r["expression"] = c
    r["label_source"] = "human"


def _review_key(r: dict[str, str], dataset: Path) -> str:
    """The dataset-relative crop path a review row names (``image``, else ``crop``)."""
    key = r.get("image", "").strip()
    if key:
        return key.replace(os.sep, "/")
    crop = r.get("crop", "").strip()
    if not crop:
        return ""
    p = Path(crop)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(dataset.resolve()).as_posix()
        except ValueError:
            return crop
    return p.as_posix()


def print_review_summary(console, s: ReviewSummary) -> None:
    parts = [f"{s.relabelled} relabelled", f"{s.confirmed} confirmed", f"{s.rejected} rejected"]
    if s.restored:
        parts.append(f"{s.restored} restored")
    answered = s.relabelled + s.confirmed + s.rejected
    changed = ("" if not answered else " (as before: nothing changed)" if not s.changed
               else f" ({s.changed} crops changed)")
    sizes = ", ".join(f"{k}.csv {v}" for k, v in s.splits.items())
    console.print(f"cage: review applied to {s.dataset}: {', '.join(parts)}{changed}; "
                  f"{s.unanswered} crops without an answer keep their labels; now {sizes}",
                  markup=False, highlight=False, soft_wrap=True)
