"""Boundary-sensitive metrics: Boundary IoU and trimap accuracy, streamed like the confusion matrix.

**Boundary IoU** (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021). For each class, the inner boundary band of the ground-truth mask and of
the predicted mask are compared by intersection over union. The band is built exactly as in the
authors' reference code (``mask_to_boundary`` in bowenc0221/boundary-iou-api): pad the binary mask
with a 1-pixel border of zeros, erode it ``d`` times with a 3x3 kernel of ones, crop the border,
and keep ``mask - eroded``, with ``d = max(1, round(ratio * sqrt(H**2 + W**2)))``.
:func:`mask_to_boundary` does literally that; :func:`label_boundary` computes the same bands for
every class of a label map at once (see there why it is equal) and is what the metric uses.

Ignore pixels: the class masks are ``target == c`` and ``pred == c`` on the full maps, so an
ignored ground-truth pixel simply belongs to no class (like the zero border) and class pixels next
to an ignored region are band pixels. After the bands are built, every pixel whose ground truth is
ignored is removed from both bands, so it counts in neither intersection nor union.

**Trimap accuracy** (the plot of the DeepLab and RefineNet papers): pixel accuracy within a band
around the ground-truth boundaries as the band widens. Boundary pixels are the non-ignored
ground-truth pixels whose 3x3 neighbourhood (inside the image) holds another value, another class
or ignore. The band of width ``w`` is that set dilated ``w`` times by a 3x3 square, i.e. the
pixels at chessboard distance <= ``w`` from a boundary pixel; accuracy counts its non-ignored
pixels. The distance is computed once per image (capped at the largest width) and histogrammed,
so all widths cost one pass.

Both accumulate int64 counts over images and ranks; scores are ratios of dataset totals.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from refineseg.evaluation.metrics import class_scores, nanmean
from refineseg.utils.distributed import all_reduce_sum

#: Trimap band widths in pixels, as in the DeepLab / RefineNet plots.
TRIMAP_WIDTHS = tuple(range(1, 41))


def boundary_width(height: int, width: int, ratio: float = 0.02) -> int:
    """Band width ``d`` in pixels for an image: ``ratio`` of its diagonal, rounded, at least 1."""
    return max(1, int(round(ratio * math.sqrt(height**2 + width**2))))


def _window_extreme(x: Tensor, radius: int, dim: int, largest: bool) -> Tensor:
    """Max (or min) of ``x`` over ``[i - radius, i + radius]`` along ``dim``; the window is clipped at the ends.

    Sparse-table doubling: log2(2 * radius + 1) elementwise ops instead of 2 * radius + 1.
    """
    op = torch.maximum if largest else torch.minimum
    info = torch.iinfo(x.dtype)
    shape = list(x.shape)
    shape[dim] = radius
    fill = x.new_full(shape, info.min if largest else info.max)  # neutral: outside the tensor is ignored
    m = torch.cat([fill, x, fill], dim)
    length, k = 2 * radius + 1, 1
    while 2 * k <= length:  # m[i] = extreme of padded[i : i + 2k]
        size = m.shape[dim]
        m = op(m.narrow(dim, 0, size - k), m.narrow(dim, k, size - k))
        k *= 2
    n = x.shape[dim]
    return op(m.narrow(dim, 0, n), m.narrow(dim, length - k, n))


def _square_extreme(x: Tensor, radius: int, largest: bool) -> Tensor:
    """Max (or min) over the (2r+1) x (2r+1) square around each pixel of (..., H, W) ``x``, clipped at the edges."""
    return _window_extreme(_window_extreme(x, radius, -2, largest), radius, -1, largest)


def _dilate3(x: Tensor) -> Tensor:
    """Binary dilation of (..., H, W) 0/1 uint8 ``x`` by a 3x3 square (outside the image is 0), in-place ORs."""
    rows = x.clone()
    rows[..., 1:, :].bitwise_or_(x[..., :-1, :])
    rows[..., :-1, :].bitwise_or_(x[..., 1:, :])
    out = rows.clone()
    out[..., :, 1:].bitwise_or_(rows[..., :, :-1])
    out[..., :, :-1].bitwise_or_(rows[..., :, 1:])
    return out


def mask_to_boundary(mask: Tensor, dilation: int) -> Tensor:
    """Inner boundary band of binary masks, step by step as the reference ``mask_to_boundary``.

    ``mask``: (..., H, W) bool or 0/1. Pads a 1-pixel border of zeros, erodes ``dilation`` times
    with a 3x3 kernel (outside the padded image does not count, as in OpenCV), crops the border and
    returns ``mask & ~eroded`` as bool. Costs ``dilation`` passes; :func:`label_boundary` is the fast
    equivalent for all classes of a label map.
    """
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    mask = mask.bool()
    eroded = F.pad(mask.to(torch.uint8), (1, 1, 1, 1), value=0)
    for _ in range(dilation):
        eroded = _square_extreme(eroded, 1, largest=False)
    return mask & (eroded[..., 1:-1, 1:-1] == 0)


def label_boundary(labels: Tensor, dilation: int) -> Tensor:
    """Bool (..., H, W): whether each pixel lies in the inner boundary band of its own class's mask.

    ``labels``: (..., H, W) integers in [0, 255]. The band of class ``c`` is
    ``label_boundary(labels, d) & (labels == c)`` and equals ``mask_to_boundary(labels == c, d)``:
    eroding the zero-bordered mask ``d`` times with a 3x3 kernel keeps a pixel exactly when every
    pixel within chessboard distance ``d`` of it, the zero border included, is in the mask. So a
    pixel of class ``c`` is a band pixel iff the (2d+1)^2 square around it holds a label other than
    ``c`` (its min differs from its max) or reaches the border, i.e. it lies within ``d`` px of the edge.
    Two separable min/max filters replace one erosion per class.
    """
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    x = labels.to(torch.uint8)
    band = _square_extreme(x, dilation, largest=True) != _square_extreme(x, dilation, largest=False)
    h, w = band.shape[-2:]
    band[..., :dilation, :] = True  # within d px of the 1-pixel zero border
    band[..., max(h - dilation, 0) :, :] = True
    band[..., :, :dilation] = True
    band[..., :, max(w - dilation, 0) :] = True
    return band


def _check_labels(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Validate a (pred, target) pair; return the non-ignored mask."""
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(
            f"pred and target must be label maps of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer label maps (take argmax of the logits first)")
    valid = target != ignore_index
    if pred.numel() == 0:
        return valid
    low, high = torch.aminmax(pred)
    if int(low) < 0 or int(high) >= num_classes:
        raise ValueError(f"pred labels must be in [0, {num_classes})")
    low, high = torch.aminmax(torch.where(valid, target, 0))
    if int(low) < 0 or int(high) >= num_classes:
        raise ValueError(f"target labels must be in [0, {num_classes}) or {ignore_index}")
    return valid


class BoundaryIoU:
    """Streaming per-class Boundary IoU: sums of band intersections and unions over images.

    ``ratio`` sets the band width per image (:func:`boundary_width` of its height and width).
    Labels must fit in a byte (at most 255 classes). Which classes count follows the one rule of
    :func:`refineseg.evaluation.metrics.class_scores`: a class with no non-ignored pixel in either
    map is undefined (NaN) and left out of ``mBoundaryIoU``; a present class whose bands are empty
    (they lie wholly on ignored pixels) scores 0.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, ratio: float = 0.02, device: torch.device | str | None = None
    ):
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
        if not ratio > 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")
        self.num_classes, self.ignore_index, self.ratio = int(num_classes), int(ignore_index), float(ratio)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.intersection = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        self.union = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        #: Non-ignored ground-truth plus predicted pixels per class: > 0 where the class is present.
        self.present = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        self.intersection.zero_()
        self.union.zero_()
        self.present.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Add (H, W) or (N, H, W) label maps; returns this call's per-class (intersection, union), int64 (C,)."""
        valid = _check_labels(pred, target, self.num_classes, self.ignore_index)
        pred, target, valid = pred.to(self.device), target.to(self.device), valid.to(self.device)
        c = self.num_classes
        target_c = torch.where(valid, target, c).to(torch.uint8)  # ignore: in no class mask
        pred_c = pred.to(torch.uint8)
        d = boundary_width(pred.shape[-2], pred.shape[-1], self.ratio)
        gt_band = label_boundary(target_c, d) & valid
        pred_band = label_boundary(pred_c, d) & valid
        # One joint histogram of (GT band class, predicted band class), c meaning "not in a band":
        # its row sums, column sums and diagonal are the GT band, predicted band and shared pixels.
        code = torch.where(gt_band, target_c, c).long() * (c + 1) + torch.where(pred_band, pred_c, c).long()
        joint = torch.bincount(code.reshape(-1), minlength=(c + 1) ** 2).reshape(c + 1, c + 1)
        inter = joint.diagonal()[:c].clone()
        union = joint.sum(1)[:c] + joint.sum(0)[:c] - inter
        self.intersection += inter
        self.union += union
        labels = torch.stack([target_c.long(), torch.where(valid, pred_c.long(), c)])
        self.present += torch.bincount(labels.reshape(-1), minlength=c + 1)[:c]
        return inter, union

    def all_reduce(self) -> None:
        """Sum the counts over all ranks in place (no-op without a process group)."""
        for counts in (self.intersection, self.union, self.present):
            all_reduce_sum(counts)

    def compute(self) -> dict[str, Any]:
        """``{"BoundaryIoU": per-class floats (NaN for absent classes), "mBoundaryIoU": their mean, "ratio"}``."""
        scores = class_scores(self.intersection, self.union, self.present > 0)
        return {"BoundaryIoU": scores.tolist(), "mBoundaryIoU": nanmean(scores), "ratio": self.ratio}


def boundary_distance(target: Tensor, ignore_index: int = 255, max_width: int = 40) -> Tensor:
    """Chessboard distance of each pixel to the nearest ground-truth boundary pixel, capped at ``max_width + 1``.

    ``target``: (..., H, W) integer labels in [0, 255]. Returns uint8 of the same shape; boundary
    pixels (see the module docstring) get 0, pixels farther than ``max_width`` get ``max_width + 1``.
    """
    if not 1 <= max_width <= 254:
        raise ValueError(f"max_width must be in [1, 254], got {max_width}")
    x = target.to(torch.uint8)
    edge = (_square_extreme(x, 1, largest=True) != _square_extreme(x, 1, largest=False)) & (target != ignore_index)
    band = edge.to(torch.uint8)
    reached = band.clone()  # how many of the bands of width 0..max_width hold the pixel
    if bool(band.any()):
        for _ in range(max_width):
            band = _dilate3(band)
            reached += band
    return (max_width + 1) - reached


class TrimapAccuracy:
    """Streaming pixel accuracy in bands of width 1..``max_width`` px around ground-truth boundaries.

    Keeps, per chessboard distance k = 0..max_width to the nearest boundary pixel, the number of
    non-ignored pixels and of correct ones; the band of width w sums distances 0..w.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        max_width: int = TRIMAP_WIDTHS[-1],
        device: torch.device | str | None = None,
    ):
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
        self.num_classes, self.ignore_index, self.max_width = int(num_classes), int(ignore_index), int(max_width)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.correct = torch.zeros(self.max_width + 1, dtype=torch.int64, device=self.device)
        self.total = torch.zeros(self.max_width + 1, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        self.correct.zero_()
        self.total.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add (H, W) or (N, H, W) label maps."""
        valid = _check_labels(pred, target, self.num_classes, self.ignore_index)
        pred, target, valid = pred.to(self.device), target.to(self.device), valid.to(self.device)
        target_c = torch.where(valid, target, self.num_classes).to(torch.uint8)
        dist = boundary_distance(target_c, self.num_classes, self.max_width).long()
        # Histogram of (distance, correct) over the valid pixels; ignored ones go to a last bin.
        bins = self.max_width + 2
        code = torch.where(valid, dist * 2 + (pred == target).long(), 2 * bins)
        counts = torch.bincount(code.reshape(-1), minlength=2 * bins + 1)[: 2 * bins].reshape(bins, 2)[:-1]
        self.total += counts.sum(1)
        self.correct += counts[:, 1]

    def all_reduce(self) -> None:
        """Sum the counts over all ranks in place (no-op without a process group)."""
        all_reduce_sum(self.correct)
        all_reduce_sum(self.total)

    def compute(self) -> dict[str, Any]:
        """``{"widths": [1, ..., max_width], "accuracy": [...]}``; NaN for a band without labelled pixels."""
        correct, total = self.correct.cumsum(0)[1:], self.total.cumsum(0)[1:]
        return {"widths": list(range(1, self.max_width + 1)), "accuracy": ratios(correct, total).tolist()}


def ratios(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64 on the CPU, NaN where ``den`` is 0."""
    num, den = num.detach().to("cpu", torch.float64), den.detach().to("cpu", torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
