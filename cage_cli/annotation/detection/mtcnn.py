"""MTCNN (Zhang et al. 2016) with facenet-pytorch's networks and weights, made faster.

The steps and thresholds are those of ``facenet_pytorch.models.utils.detect_face`` (MIT
licence), and the networks and weights are facenet-pytorch's own, carried in
``cage_cli.annotation.detection.mtcnn_nets`` so that the facenet_pytorch package (which imports
torchvision) is never imported. Two things change, both for speed:

- Every "area" resize (the image pyramid and the 24/48 px crops for the second and third
  networks) is read from one integral image of the frame. facenet-pytorch calls
  ``interpolate(mode="area")`` once per pyramid level and once per candidate box, in a
  Python loop. The integral image gives the same pixel values: area resizing averages
  whole-pixel bins of uint8 values, whose sums are exact integers in both.
- The networks run on channels-last tensors: 2-3x faster on the CPU (measured).

Boxes and scores agree with facenet-pytorch to float rounding (tests/test_mtcnn.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .mtcnn_nets import (
    batched_nms,
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    load_nets,
    pad,
    rerec,
)

#: P-Net runs on pyramid levels over this many pixels in strips of rows (big photos)
STRIP_PIXELS = 2**21
#: MTCNN.near: P-Net runs at pyramid levels where the largest face is at most this many pixels
#: (P-Net's cell is 12 px; finer levels only propose parts of a face this big)
WINDOW_LEVEL_MAX = 48
#: R-Net runs on at most this many crops at a time: on a CPU thread a 1080p keyframe's ~600
#: crops took 1.6x the time in one call (the activations leave the cache), with the same
#: outputs (docs/performance.md)
RNET_PART = 64


class MTCNN:
    """Call with (B, H, W, 3) uint8 frames of one size; returns, per frame, boxes (K, 5: x1,
    y1, x2, y2, probability) and landmarks (K, 5, 2), in the frames' pixels."""

    thresholds = (0.6, 0.7, 0.7)
    factor = 0.709

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net.to(memory_format=torch.channels_last)
                                           for net in load_nets(self.device))

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray,
                 min_face: int = 20) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._detect(frames, min_face)

    @torch.inference_mode()
    def near(self, frame: np.ndarray, windows: np.ndarray, min_face: int = 20,
             max_face: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As ``__call__`` on one (H, W, 3) frame, but P-Net looks only inside ``windows``
        (K, 4: x1, y1, x2, y2 pixels), and only at pyramid levels where a face of ``max_face``
        pixels is at most ``WINDOW_LEVEL_MAX`` px. P-Net's output there is the full frame's
        (same integral image, same bins, a grid aligned with the full level's), so faces
        inside the windows come out as full detection finds them, at a fraction of the cost.
        Used between keyframes to re-locate known faces (cage_cli.annotation.detection.detect)."""
        return self._detect(frame[None], min_face, np.asarray(windows, np.float64),
                            max_face)[0]

    def _detect(self, frames: np.ndarray, min_face: int, windows: np.ndarray | None = None,
                max_face: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        if not frames.flags.writeable:  # torch warns on read-only arrays; we never write
            frames = frames.copy()
        imgs = torch.as_tensor(frames, device=self.device)
        b, h, w = imgs.shape[:3]
        sat = _integral(imgs)

        # Stage 1: P-Net on a pyramid whose first level maps min_face to 12 px.
        levels = _pyramid(h, w, min_face, self.factor)
        if not levels:  # frames smaller than min_face
            return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))] * b
        if windows is None:
            maps = (self._pnet(sat, oh, ow) for _, oh, ow in levels)
        else:
            if max_face is not None:
                levels = [lv for lv in levels if lv[0] * max_face <= WINDOW_LEVEL_MAX]
            maps = (self._pnet_windows(sat, oh, ow, windows) for _, oh, ow in levels)
        boxes, image_inds, picks, offset = [], [], [], 0
        for (scale, _, _), (reg, probs) in zip(levels, maps, strict=True):
            boxes_s, inds_s = generateBoundingBox(reg, probs[:, 1], scale, self.thresholds[0])
            boxes.append(boxes_s)
            image_inds.append(inds_s)
            picks.append(batched_nms(boxes_s[:, :4], boxes_s[:, 4], inds_s, 0.5) + offset)
            offset += len(boxes_s)
        if not picks:
            return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))] * b
        pick = torch.cat(picks)
        boxes, image_inds = torch.cat(boxes)[pick], torch.cat(image_inds)[pick]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                             boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                             boxes[:, 4]], dim=1)
        boxes = rerec(boxes)

        boxes, image_inds = self._refine(sat, boxes, image_inds)  # stage 2
        boxes, points, image_inds = self._output(sat, boxes, image_inds)  # stage 3
        boxes, points, inds = boxes.cpu().numpy(), points.cpu().numpy(), image_inds.cpu().numpy()
        return [(boxes[inds == i], points[inds == i]) for i in range(b)]

    def _pnet(self, sat: torch.Tensor, oh: int, ow: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net on one pyramid level. A big level (a big photo's) goes through in strips of
        rows, so memory stays bounded: each output cell sees 12 input rows from an even row
        (2x2 pooling), so strips starting at even rows, overlapping by 10, give every cell
        exactly once; the cells of a strip's last rows are cut if they miss rows."""
        rows = max(64, STRIP_PIXELS // ow // 2 * 2)
        regs, probs, top = [], [], 0
        while True:
            bottom = min(oh, top + rows)
            level = _level(sat, oh, ow, top, bottom).permute(0, 3, 1, 2)  # channels-last
            reg, prob = self.pnet(_normalise(level))
            del level
            if bottom == oh:
                regs.append(reg)
                probs.append(prob)
                break
            n = (bottom - top - 12) // 2 + 1  # cells whose 12 rows are all in the strip
            regs.append(reg[:, :, :n])
            probs.append(prob[:, :, :n])
            top += 2 * n
        if len(regs) == 1:
            return regs[0], probs[0]
        return torch.cat(regs, 2), torch.cat(probs, 2)

    def _pnet_windows(self, sat: torch.Tensor, oh: int, ow: int,
                      windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net's output maps for one pyramid level (oh x ow) of one frame, computed only
        inside ``windows`` (frame pixels) and zero (no face) elsewhere. Each window starts on
        an even level pixel and spans an even number, so its outputs are the full level's."""
        h, w = sat.shape[1] - 1, sat.shape[2] - 1
        reg = torch.zeros(1, 4, -(-(oh - 2) // 2) - 4, -(-(ow - 2) // 2) - 4, device=self.device)
        probs = torch.zeros(1, 2, *reg.shape[2:], device=self.device)
        for x1, y1, x2, y2 in windows:
            ra, ca = max(0, int(y1 * oh / h)) // 2 * 2, max(0, int(x1 * ow / w)) // 2 * 2
            rn = (min(oh, int(np.ceil(y2 * oh / h))) - ra) // 2 * 2
            cn = (min(ow, int(np.ceil(x2 * ow / w))) - ca) // 2 * 2
            if rn < 12 or cn < 12:
                continue
            level = _level(sat, oh, ow, ra, ra + rn, ca, ca + cn)
            reg_w, probs_w = self.pnet(_normalise(level.permute(0, 3, 1, 2)))
            out = (slice(None), slice(None), slice(ra // 2, ra // 2 + reg_w.shape[2]),
                   slice(ca // 2, ca // 2 + reg_w.shape[3]))
            reg[out], probs[out] = reg_w, probs_w
        return reg, probs

    def _refine(self, sat: torch.Tensor, boxes: torch.Tensor,
                image_inds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net on 24 px crops of ``boxes`` (K, >= 4) in the frames of the integral
        images ``sat``; returns the kept boxes (squared) and their frames."""
        if not len(boxes):
            return boxes, image_inds
        h, w = sat.shape[1] - 1, sat.shape[2] - 1
        crops, valid = _crops(sat, boxes, image_inds, w, h, 24)
        reg, probs = _in_parts(self.rnet, _normalise(crops), RNET_PART)
        keep = (probs[:, 1] > self.thresholds[1]) & valid
        boxes = torch.cat((boxes[keep, :4], probs[keep, 1:2]), dim=1)
        image_inds, reg = image_inds[keep], reg[keep]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        return rerec(bbreg(boxes[pick], reg[pick])), image_inds[pick]

    def _output(self, sat: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net on 48 px crops, with landmarks; returns the kept boxes (K, 5), their
        landmarks (K, 5, 2) and their frames."""
        points = torch.zeros(0, 5, 2, device=self.device)
        if not len(boxes):
            return boxes, points, image_inds
        h, w = sat.shape[1] - 1, sat.shape[2] - 1
        crops, valid = _crops(sat, boxes, image_inds, w, h, 48)
        reg, marks, probs = self.onet(_normalise(crops))
        keep = (probs[:, 1] > self.thresholds[2]) & valid
        boxes = torch.cat((boxes[keep, :4], probs[keep, 1:2]), dim=1)
        image_inds, reg, marks = image_inds[keep], reg[keep], marks[keep]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = torch.stack((bw * marks[:, :5] + boxes[:, 0:1] - 1,
                              bh * marks[:, 5:10] + boxes[:, 1:2] - 1), dim=2)
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        return boxes[pick], points[pick], image_inds[pick]


def _in_parts(net: torch.nn.Module, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``net(x)``, ``n`` items at a time."""
    if len(x) <= n:
        return net(x)
    parts = [net(x[i : i + n]) for i in range(0, len(x), n)]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def _integral(imgs: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, H+1, W+1, C) integer sums of all pixels above and left,
    summed in place (one integer copy of the frames, not three)."""
    b, h, w, c = imgs.shape
    dtype = torch.int32 if h * w * 255 < 2**31 else torch.int64
    sat = torch.zeros((b, h + 1, w + 1, c), dtype=dtype, device=imgs.device)
    inner = sat[:, 1:, 1:]
    inner.copy_(imgs)
    torch.cumsum(inner, 1, out=inner)
    torch.cumsum(inner, 2, out=inner)
    return sat


def _bins(size: int | torch.Tensor, out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Start and end (exclusive) of each of ``out`` area-resize bins over ``size`` pixels, as
    in PyTorch's adaptive average pooling; ``size`` may be a (K, 1) tensor of sizes."""
    i = torch.arange(out, device=device)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


def _corners(sat_shape: torch.Size, k: torch.Tensor, r0: torch.Tensor, r1: torch.Tensor,
             c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """Flat indices into the integral image of the four corners of every bin: frame ``k``
    (K,), row bins [r0, r1) (K, OH), column bins [c0, c1) (K, OW) -> (4, K, OH, OW)."""
    hp, wp = sat_shape[1], sat_shape[2]
    base = (k * hp)[:, None, None]

    def flat(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (base + r[:, :, None]) * wp + c[:, None, :]

    return torch.stack([flat(r1, c1), flat(r0, c1), flat(r1, c0), flat(r0, c0)])


def _means(sat: torch.Tensor, corners: torch.Tensor, kh: torch.Tensor,
           kw: torch.Tensor) -> torch.Tensor:
    """Bin means (float32) from one gather of the corners; divided as PyTorch divides
    (sum / kh / kw), so the values equal interpolate(mode="area") bit for bit."""
    g = sat.view(-1, sat.shape[-1]).index_select(0, corners.flatten())
    g = g.view(*corners.shape, sat.shape[-1])
    return (g[0] - g[1] - g[2] + g[3]).float() / kh / kw


def _level(sat: torch.Tensor, oh: int, ow: int, top: int = 0, bottom: int | None = None,
           left: int = 0, right: int | None = None) -> torch.Tensor:
    """Rows [top, bottom) and columns [left, right) of the frames area-resized to oh x ow,
    (B, rows, columns, C) float32: the corner sums of every bin, gathered rows first (their
    difference), then columns (no index tensor per pixel), divided as _means divides."""
    h, w = sat.shape[1] - 1, sat.shape[2] - 1
    r0, r1, kh = (x[top:bottom] for x in _level_bins(h, oh, sat.device))
    c0, c1, kw = (x[left:right] for x in _level_bins(w, ow, sat.device))
    rows = sat.index_select(1, r1).sub_(sat.index_select(1, r0))
    sums = rows.index_select(2, c1).sub_(rows.index_select(2, c0))
    del rows
    return sums.float().div_(kh[None, :, None, None]).div_(kw[None, None, :, None])


@functools.lru_cache(maxsize=256)
def _level_bins(size: int, out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """_bins of a pyramid level and each bin's pixel count (float32), kept: a video's frames
    and windows reuse the same few levels. Read only."""
    start, end = _bins(size, out, device)
    return start, end, (end - start).float()


def _pyramid(h: int, w: int, min_face: int, factor: float) -> list[tuple[float, int, int]]:
    """MTCNN's image pyramid for frames of h x w: its levels (scale, height, width)."""
    levels = []
    scale, minl = 12.0 / min_face, min(h, w) * 12.0 / min_face
    while minl >= 12:
        levels.append((scale, int(h * scale + 1), int(w * scale + 1)))
        scale, minl = scale * factor, minl * factor
    return levels


def _crops(sat: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, w: int, h: int,
           size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes cut as facenet-pytorch cuts them (clipped to the frame, 1-based ends) and
    area-resized to size x size: (K, C, size, size) float32, and which boxes overlap the
    frame at all (facenet-pytorch skips the others; here their crops are garbage)."""
    y, ey, x, ex = (torch.as_tensor(v, device=sat.device).long()[:, None]
                    for v in pad(boxes, w, h))
    valid = ((ey >= y) & (ex >= x))[:, 0]
    ey, ex = torch.maximum(ey, y), torch.maximum(ex, x)
    r0, r1 = _bins(ey - y + 1, size, sat.device)
    c0, c1 = _bins(ex - x + 1, size, sat.device)
    r0, r1, c0, c1 = r0 + y - 1, r1 + y - 1, c0 + x - 1, c1 + x - 1
    corners = _corners(sat.shape, image_inds.long(), r0, r1, c0, c1)
    out = _means(sat, corners, (r1 - r0).float()[:, :, None, None],
                 (c1 - c0).float()[:, None, :, None])
    return out.permute(0, 3, 1, 2), valid  # channels-last memory, NCHW shape


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125
