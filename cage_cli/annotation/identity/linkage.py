"""Who is who: link items (tracks, photo faces) into persons by their face embeddings.

Agglomerative clustering of Euclidean distances between descriptors
(cage_cli.annotation.identity.embed), with cannot-link constraints: two items that can never be one
person (two tracks of one source that overlap in time, two faces of one photo) never end up in
one cluster, whatever their distance. Merging stops at ``threshold``. Cautious by design (a wrong
merge mixes two people's data; a split only leaves one person under two ids): the default
linkage is "average" (the mean distance between all items of the two clusters must be under the
threshold) and "complete" (every pair must be) is stricter still. The default threshold was
chosen on ../shared/identity by benchmarks/persons.py (docs/persons.md).

Cost: an N x N float32 matrix (N = 10 000 items: 400 MB) and about N^2 operations; fine for
tracks and photo collections of a few thousand faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Default distance threshold (Euclidean, faceapi-recognition descriptors of aligned faces);
#: chosen in docs/persons.md.
DEFAULT_THRESHOLD = 0.45
LINKAGES = ("average", "complete")


def overlap_constraints(groups: Sequence, starts: Sequence[float] | np.ndarray,
                        ends: Sequence[float] | np.ndarray) -> np.ndarray:
    """Cannot-link pairs (M, 2) int64 (i < j): items of one group (e.g. source) whose
    [start, end] spans overlap (tracks seen in one frame at once; faces of one photo: give them
    the same span). Items of different groups are never constrained."""
    keys = np.asarray([str(g) for g in groups])
    s, e = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    if not (len(keys) == len(s) == len(e)):
        raise ValueError("groups, starts and ends differ in length")
    pairs = []
    for key in dict.fromkeys(keys):
        idx = np.flatnonzero(keys == key)
        if len(idx) < 2:
            continue
        over = (s[idx][:, None] <= e[idx][None, :]) & (s[idx][None, :] <= e[idx][:, None])
        i, j = np.nonzero(np.triu(over, 1))
        pairs.append(np.stack([idx[i], idx[j]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def link_persons(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 cannot_link: np.ndarray | Sequence[tuple[int, int]] | None = None,
                 linkage: str = "average",
                 first_seen: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """Person ids (N,) int32 of N items with descriptors (N, D), numbered 0, 1, ... in order
    of first appearance: of each person's earliest ``first_seen`` (e.g. the first frame of a
    track; default: the item's index), ties broken by item index.

    Clusters are merged closest first while their linkage distance is at most ``threshold``,
    never across a ``cannot_link`` pair (M, 2) of item indices. Deterministic: the same inputs
    give the same ids.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r} ({', '.join(LINKAGES)})")
    x = np.asarray(embeddings, np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int32)
    d2 = (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T
    dist = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
    pairs = np.asarray(cannot_link if cannot_link is not None else [], np.int64).reshape(-1, 2)
    dist[pairs[:, 0], pairs[:, 1]] = np.inf
    dist[pairs[:, 1], pairs[:, 0]] = np.inf
    np.fill_diagonal(dist, np.inf)

    size = np.ones(n, np.int64)
    alive = np.ones(n, bool)
    label = np.arange(n)  # item -> cluster (the index of its surviving row)
    nearest = dist.argmin(1)  # per row: the closest live cluster, and its distance
    near_d = dist[np.arange(n), nearest]
    while True:
        i = int(np.argmin(np.where(alive, near_d, np.inf)))
        if not alive[i] or not near_d[i] <= threshold:
            break
        j = int(nearest[i])
        # Lance-Williams update of row/column i as the union of clusters i and j
        if linkage == "average":
            merged = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
        else:
            merged = np.maximum(dist[i], dist[j])  # inf (cannot link) stays inf
        dist[i], dist[:, i] = merged, merged
        dist[i, i] = np.inf
        dist[j], dist[:, j] = np.inf, np.inf
        alive[j] = False
        size[i] += size[j]
        label[label == j] = i
        # rows whose nearest cluster was i or j, and row i itself, look again
        stale = alive & ((nearest == i) | (nearest == j))
        stale[i] = True
        rows = np.flatnonzero(stale)
        nearest[rows] = dist[rows].argmin(1)
        near_d[rows] = dist[rows, nearest[rows]]
        # every other row: the merged cluster may now be its nearest
        closer = alive & (dist[:, i] < near_d)
        nearest[closer], near_d[closer] = i, dist[closer, i]
    # renumber in order of first appearance
    seen = np.arange(n, dtype=np.float64) if first_seen is None else np.asarray(
        first_seen, np.float64)
    if seen.shape != (n,):
        raise ValueError(f"first_seen has shape {seen.shape}, expected ({n},)")
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), seen))] = np.arange(n)  # items by (first_seen, index)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, label, rank)  # per cluster: the rank of its earliest item
    clusters = np.flatnonzero(first < n)
    ids = np.empty(n, np.int32)
    ids[clusters[np.argsort(first[clusters])]] = np.arange(len(clusters))
    return ids[label]


def pair_scores(truth: Sequence, predicted: Sequence) -> dict[str, float | int]:
    """Pairwise precision and recall of a clustering: of the pairs put in one person, the
    share that are one true person (precision), and of the true same-person pairs, the share
    put in one person (recall). Counts are returned too."""
    t = np.asarray([str(v) for v in truth])
    p = np.asarray(predicted)
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    upper = np.triu(np.ones_like(same_t), 1)
    tp = int((same_t & same_p & upper).sum())
    pred_pairs = int((same_p & upper).sum())
    true_pairs = int((same_t & upper).sum())
    return {
        "precision": tp / pred_pairs if pred_pairs else 1.0,
        "recall": tp / true_pairs if true_pairs else 1.0,
        "true_pairs": true_pairs, "predicted_pairs": pred_pairs, "correct_pairs": tp,
        "persons": int(len(np.unique(p))), "true_persons": int(len(np.unique(t))),
    }
