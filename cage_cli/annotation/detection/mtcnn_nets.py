"""facenet-pytorch's MTCNN networks and box helpers, carried here so that cage never imports
the ``facenet_pytorch`` package: its ``__init__`` imports torchvision (for ``batched_nms``
only), which pulls in ~1,000 modules, ~170 MiB of memory and 1-3 s of start-up per run.

``PNet``, ``RNet``, ``ONet``, ``bbreg``, ``generateBoundingBox``, ``pad``, ``rerec``,
``nms_numpy`` and ``batched_nms_numpy`` are from facenet-pytorch 2.5.3
(https://github.com/timesler/facenet-pytorch, ``models/mtcnn.py`` and
``models/utils/detect_face.py``), Copyright (c) 2019 Timothy Esler, MIT licence. The weights
are facenet-pytorch's data files (``facenet_pytorch/data/*.pt``), found without importing
the package; facenet-pytorch stays a dependency to ship them.

``nms`` and ``batched_nms`` give torchvision's results (``torchvision.ops``, 0.29, BSD):
the same keep indices, in the same order (tests/test_mtcnn.py compares them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: torchvision's batched_nms: above this many box coordinates it runs nms per class, below
#: it offsets each class's boxes apart (the "coordinate trick", which rounds the coordinates)
_VANILLA_NUMEL = {"cpu": 4000}
_VANILLA_NUMEL_OTHER = 100_000
#: nms computes all pairs' IoU at once up to this many boxes (250k pairs, a few MB)
_MATRIX_MAX = 500


def weights_dir() -> Path:
    """facenet-pytorch's data folder; ``find_spec`` of a top-level package does not run its
    ``__init__`` (which would import torchvision)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch is not installed (cage needs its MTCNN weights)")
    return Path(spec.submodule_search_locations[0]) / "data"


def load_nets(device: torch.device) -> tuple[PNet, RNet, ONet]:
    """The three networks with facenet-pytorch's weights, in eval mode on ``device``."""
    folder = weights_dir()
    nets = PNet(), RNet(), ONet()
    for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        net.load_state_dict(torch.load(folder / f"{name}.pt", map_location=device,
                                       weights_only=True))
        net.to(device).eval()
    return nets


#: max_pool_rows leaves tensors smaller than this to torch (its own calls cost more there)
SMALL_POOL = 2**14


def max_pool_rows(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool(x)`` (no padding, ``ceil_mode``) for a channels-last (N, C, H, W) tensor on the
    CPU, bit for bit: the maximum of strided views, rows first, then columns. torch's
    channels-last kernel took 6.9 ms on P-Net's first 960x540 level, this 1.1 ms."""
    k, s = pool.kernel_size, pool.stride
    if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last) \
            or min(x.shape[2:]) < k or x.numel() < SMALL_POOL:
        return pool(x)
    v = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
    return _window_max(_window_max(v, 1, k, s), 2, k, s).permute(0, 3, 1, 2)


def _window_max(v: torch.Tensor, dim: int, k: int, s: int) -> torch.Tensor:
    """Maxima of windows of ``k`` along ``dim``, ``s`` apart; with ``ceil_mode``, a last
    window cut by the edge (torch's rule: it must start inside)."""
    size = v.shape[dim]
    n = -(-(size - k) // s) + 1
    n -= (n - 1) * s >= size
    full = (size - k) // s + 1  # windows wholly inside

    def at(start: int, stop: int, step: int = 1) -> tuple[slice, ...]:
        return (slice(None),) * dim + (slice(start, stop, step),)

    out = v.new_empty(v.shape[:dim] + (n,) + v.shape[dim + 1 :])
    head = out[at(0, full)]
    torch.maximum(v[at(0, (full - 1) * s + 1, s)], v[at(1, (full - 1) * s + 2, s)], out=head)
    for i in range(2, k):
        torch.maximum(head, v[at(i, (full - 1) * s + 1 + i, s)], out=head)
    for j in range(full, n):
        out[at(j, j + 1)] = v[at(j * s, size)].amax(dim, keepdim=True)
    return out


class PNet(nn.Module):
    """MTCNN's proposal network (facenet-pytorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = max_pool_rows(self.prelu1(self.conv1(x)), self.pool1)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """MTCNN's refinement network (facenet-pytorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = max_pool_rows(self.prelu1(self.conv1(x)), self.pool1)
        x = max_pool_rows(self.prelu2(self.conv2(x)), self.pool2)
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN's output network, with landmarks (facenet-pytorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = max_pool_rows(self.prelu1(self.conv1(x)), self.pool1)
        x = max_pool_rows(self.prelu2(self.conv2(x)), self.pool2)
        x = max_pool_rows(self.prelu3(self.conv3(x)), self.pool3)
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU ``nms``: visit boxes by descending score (stable sort), keep each one
    not yet suppressed and suppress the later ones whose IoU with it is > ``iou_threshold``;
    IoU is inter / (area_i + area_j - inter) in the boxes' dtype, areas (x2-x1)*(y2-y1).
    Returns the kept indices (int64), by descending score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = scores.sort(stable=True, descending=True)[1]
    b = boxes[order].cpu().numpy()
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, i]) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = b.dtype.type(0)

    def over(i: np.ndarray | int, rest: np.ndarray | slice) -> np.ndarray:
        """IoU > iou_threshold of boxes i and rest (broadcast), computed as torchvision
        does, and compared in double as its C++ does."""
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        return (inter / (areas[i] + areas[rest] - inter)).astype(np.float64) > iou_threshold

    keep = []
    if len(b) <= _MATRIX_MAX:  # all pairs at once, then the greedy pass over booleans
        pairs = over(np.arange(len(b))[:, None], slice(None))
        suppressed = np.zeros(len(b), bool)
        for i in range(len(b)):
            if not suppressed[i]:
                keep.append(i)
                suppressed |= pairs[i]
    else:  # row by row: memory stays O(n)
        alive = np.arange(len(b))  # positions in ``order`` not yet kept nor suppressed
        while len(alive):
            i, rest = alive[0], alive[1:]
            keep.append(i)
            alive = rest[~over(i, rest)]
    return order[torch.from_numpy(np.asarray(keep, np.int64)).to(order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """``nms`` within each class ``idxs``, as torchvision's ``batched_nms`` (same choice of
    method by box count and device, so the same rounding): kept indices by descending score."""
    limit = _VANILLA_NUMEL.get(boxes.device.type, _VANILLA_NUMEL_OTHER)
    if boxes.numel() > limit:  # torchvision's _batched_nms_vanilla
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            keep_mask[curr[nms(boxes[curr], scores[curr], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    # torchvision's _batched_nms_coordinate_trick
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# facenet-pytorch's helpers, as they are there (names and all).

def bbreg(boundingbox: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    if reg.shape[1] == 1:
        reg = torch.reshape(reg, (reg.shape[2], reg.shape[3]))
    w = boundingbox[:, 2] - boundingbox[:, 0] + 1
    h = boundingbox[:, 3] - boundingbox[:, 1] + 1
    b1 = boundingbox[:, 0] + reg[:, 0] * w
    b2 = boundingbox[:, 1] + reg[:, 1] * h
    b3 = boundingbox[:, 2] + reg[:, 2] * w
    b4 = boundingbox[:, 3] + reg[:, 3] * h
    boundingbox[:, :4] = torch.stack([b1, b2, b3, b4]).permute(1, 0)
    return boundingbox


def generateBoundingBox(reg: torch.Tensor, probs: torch.Tensor, scale: float,  # noqa: N802
                        thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    stride = 2
    cellsize = 12
    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= thresh
    mask_inds = mask.nonzero()
    image_inds = mask_inds[:, 0]
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
    q1 = ((stride * bb + 1) / scale).floor()
    q2 = ((stride * bb + cellsize - 1 + 1) / scale).floor()
    boundingbox = torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1)
    return boundingbox, image_inds


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float,
              method: str) -> np.ndarray:
    if boxes.size == 0:
        return np.empty((0, 3))
    x1, y1, x2, y2 = (boxes[:, i].copy() for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = np.zeros_like(scores, dtype=np.int16)
    counter = 0
    while order.size > 0:
        i = order[-1]
        pick[counter] = i
        counter += 1
        idx = order[0:-1]
        xx1 = np.maximum(x1[i], x1[idx])
        yy1 = np.maximum(y1[i], y1[idx])
        xx2 = np.minimum(x2[i], x2[idx])
        yy2 = np.minimum(y2[i], y2[idx])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        if method == "Min":
            o = inter / np.minimum(area[i], area[idx])
        else:
            o = inter / (area[i] + area[idx] - inter)
        order = order[np.where(o <= threshold)]
    return pick[:counter].copy()


def batched_nms_numpy(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                      threshold: float, method: str) -> torch.Tensor:
    device = boxes.device
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    boxes_for_nms = (boxes + offsets[:, None]).cpu().numpy()
    keep = nms_numpy(boxes_for_nms, scores.cpu().numpy(), threshold, method)
    return torch.as_tensor(keep, dtype=torch.long, device=device)


def pad(boxes: torch.Tensor, w: int, h: int) -> tuple[np.ndarray, ...]:
    boxes = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def rerec(bboxA: torch.Tensor) -> torch.Tensor:  # noqa: N803
    h = bboxA[:, 3] - bboxA[:, 1]
    w = bboxA[:, 2] - bboxA[:, 0]
    side = torch.max(w, h)
    bboxA[:, 0] = bboxA[:, 0] + w * 0.5 - side * 0.5
    bboxA[:, 1] = bboxA[:, 1] + h * 0.5 - side * 0.5
    bboxA[:, 2:4] = bboxA[:, :2] + side.repeat(2, 1).permute(1, 0)
    return bboxA
