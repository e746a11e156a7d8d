"""Segmentation losses for class imbalance: cross-entropy, OHEM, focal, soft dice, Lovász-softmax.

Every loss takes logits ``(N, C, H, W)`` of any float dtype (computed in float32, or float64 for
float64 input) and targets ``(N, H, W)`` int64 where ``ignore_index`` (255) marks pixels that
count nowhere. ``build_loss("ce+0.5*dice", num_classes=C)`` gives a weighted sum of them.

Distributed training (DDP) contract: on each of k processes the returned value is built so that
the *mean over processes* of the values equals the loss of one process on the whole global batch,
and the *mean over processes* of the gradients (what DDP computes) equals that process's gradient.

* ``ce``, ``focal``, ``ohem``: each process sums its per-pixel losses and divides by the
  normaliser (valid-pixel count, sum of class weights, OHEM-kept count) all-reduced over
  processes, times k. Exact.
* ``dice``: per-class intersection and cardinality sums are all-reduced; the local part stays in
  the autograd graph (``local + (global - local).detach()``), so each process back-propagates the
  global dice through its own pixels; the gradient is scaled by k and the value is the global loss.
  Exact.
* ``ohem`` keeps hard pixels *per image* (``min_kept`` is per image), so the kept set does not
  depend on how the batch is split over processes. Exact.
* ``lovasz`` needs a sort over all pixels of the batch, which would mean gathering every pixel's
  error on every process, so it is computed **per process over the local batch**: with DDP the
  loss is the mean over processes of the local-batch Lovász losses, not the Lovász loss of the
  global batch (the same holds for batch-size changes on one process).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from refineseg.errors import DataError, RefineSegError, file_error
from refineseg.utils import distributed as dist_utils

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "OhemCrossEntropyLoss",
    "FocalLoss",
    "DiceLoss",
    "LovaszSoftmaxLoss",
    "WeightedSumLoss",
    "parse_loss_spec",
    "build_loss",
    "class_weights_from_counts",
    "load_class_weights",
]


def _global_sum(local: torch.Tensor) -> torch.Tensor:
    """The all-reduced sum of ``local`` with value global but gradient flowing into ``local`` only."""
    total = dist_utils.all_reduce_sum(local.detach().clone())
    return local + (total - local.detach())


class _SegLoss(nn.Module):
    """Shared set-up: class count, ignore index, optional per-class weights ``(C,)``."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_weights: torch.Tensor | np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float64).flatten()
            if class_weights.numel() != self.num_classes:
                raise RefineSegError(f"class weights: {class_weights.numel()} values for {self.num_classes} classes")
            if not bool(torch.isfinite(class_weights).all()) or bool((class_weights < 0).any()):
                raise RefineSegError("class weights must be finite and >= 0")
        self.register_buffer("class_weights", class_weights, persistent=False)

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor):
        """Logits in the compute dtype, targets with ignored pixels set to 0, the valid mask ``(N, H, W)``
        and the weights ``(C,)`` (ones when no class weights)."""
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        if self.class_weights is None:
            weights = torch.ones(self.num_classes, dtype=logits.dtype, device=logits.device)
        else:
            weights = self.class_weights.to(logits.device, logits.dtype)
        return logits, safe, valid, weights

    @staticmethod
    def _pixel_mean(pixel_loss: torch.Tensor, mask: torch.Tensor, pixel_weight: torch.Tensor) -> torch.Tensor:
        """``sum(w * loss over mask) / global sum(w over mask)``, times the world size (see module doc)."""
        w = pixel_weight * mask
        total = (pixel_loss * w).sum()
        denom = dist_utils.all_reduce_sum(w.detach().sum().to(torch.float64).reshape(1))[0]
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        return total * dist_utils.world_size() / denom.to(total.dtype)


class CrossEntropyLoss(_SegLoss):
    """Cross-entropy; with class weights the weighted mean ``sum w_y l / sum w_y`` (as torch's)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, valid, weights = self._prepare(logits, target)
        ce = F.cross_entropy(logits, safe, reduction="none")
        return self._pixel_mean(ce, valid, weights[safe])


class FocalLoss(_SegLoss):
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017), averaged like :class:`CrossEntropyLoss`.

    Class weights play the role of the paper's alpha, as a weighted mean; gamma = 0 gives CE.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights=None, gamma: float = 2.0) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, valid, weights = self._prepare(logits, target)
        ce = F.cross_entropy(logits, safe, reduction="none")
        p_t = torch.exp(-ce)
        focal = (1 - p_t).clamp(min=0) ** self.gamma * ce
        return self._pixel_mean(focal, valid, weights[safe])


class OhemCrossEntropyLoss(_SegLoss):
    """Cross-entropy over hard pixels (online hard example mining, as mmsegmentation's OHEM sampler).

    A valid pixel is kept when its softmax probability of the true class is below ``thresh``, or
    when it is among the ``min_kept`` lowest-probability valid pixels *of its image* (ties broken
    by position). The loss is the (class-weighted) mean CE over the kept pixels of the global
    batch. mmsegmentation keeps ``min_kept x batch size`` pixels pooled over the batch; choosing
    them per image gives the same count and makes the result independent of the DDP split.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_weights=None, thresh: float = 0.7, min_kept: int = 100000
    ) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        if not 0 <= thresh <= 1 or min_kept < 0:
            raise RefineSegError(f"OHEM needs 0 <= thresh <= 1 and min_kept >= 0, got {thresh} and {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    @torch.no_grad()
    def kept_mask(self, ce: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The ``(N, H, W)`` bool mask of kept pixels given the per-pixel CE (``-log p_true``)."""
        p_true = torch.exp(-ce)
        kept = valid & (p_true < self.thresh)
        k = min(self.min_kept, p_true[0].numel())
        if k > 0:
            flat = torch.where(valid, p_true, torch.full_like(p_true, math.inf)).flatten(1)
            hardest = flat.argsort(dim=1, stable=True)[:, :k]
            forced = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, hardest, True)
            kept |= forced.view_as(valid) & valid
        return kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, valid, weights = self._prepare(logits, target)
        ce = F.cross_entropy(logits, safe, reduction="none")
        return self._pixel_mean(ce, self.kept_mask(ce, valid), weights[safe])


class DiceLoss(_SegLoss):
    """Soft dice ``1 - sum_c w_c (2 I_c + s) / (U_c + s) / sum_c w_c`` over all classes.

    ``I_c = sum p_c t_c`` and ``U_c = sum p_c + sum t_c`` over the valid pixels of the global
    batch (softmax ``p``, one-hot ``t``); ``smooth`` s = 1 makes a class absent from both target
    and prediction score 1 instead of 0/0.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights=None, smooth: float = 1.0) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, valid, weights = self._prepare(logits, target)
        mask = valid.unsqueeze(1).to(logits.dtype)
        probs = logits.softmax(dim=1) * mask
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).to(logits.dtype) * mask
        intersection = (probs * onehot).sum((0, 2, 3))
        cardinality = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        intersection, cardinality = _global_sum(torch.stack([intersection, cardinality]))
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        loss = 1 - (weights * dice).sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
        k = dist_utils.world_size()
        return k * loss - (k - 1) * loss.detach()  # value: global loss; gradient: k x local share


class LovaszSoftmaxLoss(_SegLoss):
    """Lovász-softmax (Berman et al. 2018): the Lovász extension of the Jaccard loss per class.

    Pools the valid pixels of the (local) batch ("per_image=False") and averages over the classes
    present in the target (weighted by class weights if given). With DDP it is computed per
    process on the local batch (see the module doc).
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, safe, valid, weights = self._prepare(logits, target)
        probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[valid]  # (P, C)
        labels = safe[valid]
        total, weight_sum = logits.sum() * 0, logits.new_zeros(())
        for c in labels.unique().tolist():
            fg = (labels == c).to(probs.dtype)
            errors, order = (fg - probs[:, c]).abs().sort(descending=True)
            total = total + weights[c] * torch.dot(errors, _lovasz_grad(fg[order]))
            weight_sum = weight_sum + weights[c]
        return total / weight_sum if weight_sum > 0 else total  # no class present: 0, with a graph


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for errors sorted in decreasing order."""
    positives = fg_sorted.sum()
    intersection = positives - fg_sorted.cumsum(0)
    union = positives + (1 - fg_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


LOSSES: dict[str, type[_SegLoss]] = {
    "ce": CrossEntropyLoss,
    "ohem": OhemCrossEntropyLoss,
    "dice": DiceLoss,
    "lovasz": LovaszSoftmaxLoss,
    "focal": FocalLoss,
}

_TERM = re.compile(r"^(?:(?P<weight>[^*]+?)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)$")


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``"ce + 0.5*dice"`` -> ``[(1.0, "ce"), (0.5, "dice")]``: terms ``[W*]NAME`` joined by ``+``.

    Weights must be finite and > 0; names are those of :data:`LOSSES` (case-insensitive).
    Raises :class:`RefineSegError` naming the bad term.
    """
    valid = ", ".join(LOSSES)
    terms = [t.strip() for t in re.split(r"(?<![0-9.][eE])\+", str(spec))]
    parsed = []
    for term in terms:
        match = _TERM.match(term)
        weight, name = (match["weight"], match["name"].lower()) if match else (None, None)
        try:
            value = 1.0 if weight is None else float(weight)
        except ValueError:
            value = None
        if match is None or name not in LOSSES or value is None or not math.isfinite(value) or value <= 0:
            raise RefineSegError(
                f"loss spec {spec!r}: bad term {term!r}; expected [WEIGHT*]NAME with WEIGHT > 0 "
                f"and NAME one of {valid}, joined by '+'"
            )
        parsed.append((value, name))
    return parsed


class WeightedSumLoss(nn.Module):
    """``sum_i w_i * loss_i(logits, target)``; ``terms`` holds ``(weight, name, module)``."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _, _ in terms]
        self.names = [name for _, name, _ in terms]
        self.losses = nn.ModuleList([module for _, _, module in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{name}" for w, name in zip(self.weights, self.names))


def build_loss(
    spec: str,
    *,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: torch.Tensor | np.ndarray | None = None,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100000,
) -> nn.Module:
    """The loss module for a spec such as ``"ce"`` or ``"ohem+0.5*lovasz"``; forward -> scalar.

    ``class_weights`` (C values) apply to every term: per pixel for ce/ohem/focal, per class in
    the mean for dice/lovasz. ``ohem_min_kept`` is per image.
    """
    terms = []
    for weight, name in parse_loss_spec(spec):
        options = {"thresh": ohem_thresh, "min_kept": ohem_min_kept} if name == "ohem" else {}
        module = LOSSES[name](num_classes, ignore_index=ignore_index, class_weights=class_weights, **options)
        terms.append((weight, name, module))
    return WeightedSumLoss(terms)


def class_weights_from_counts(pixel_counts: np.ndarray, image_pixel_counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015): ``w_c = median(freq) / freq_c``.

    ``freq_c = pixel_counts[c] / image_pixel_counts[c]``, where ``image_pixel_counts[c]`` is the
    total pixel count of the images containing class c; the median is over seen classes. A class
    with no pixels gets weight 1 (the median class's weight), with a warning: weight 0 would
    silently stop it from being learnt should it appear after all, and it has no frequency to
    balance. Raises ValueError on negative or inconsistent counts.
    """
    pixels = np.asarray(pixel_counts, dtype=np.float64).ravel()
    image_pixels = np.asarray(image_pixel_counts, dtype=np.float64).ravel()
    if pixels.shape != image_pixels.shape:
        raise ValueError(f"{pixels.size} pixel counts but {image_pixels.size} image pixel counts")
    if not (np.isfinite(pixels).all() and np.isfinite(image_pixels).all()) or (pixels < 0).any():
        raise ValueError("pixel counts must be finite and >= 0")
    if (pixels > image_pixels).any():
        raise ValueError("a class has more pixels than the images that contain it")
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no class has any pixel")
    freq = pixels[seen] / image_pixels[seen]
    weights = np.ones_like(pixels)
    weights[seen] = np.median(freq) / freq
    if not seen.all():
        warnings.warn(f"classes {np.flatnonzero(~seen).tolist()} have no pixels; giving them weight 1", stacklevel=2)
    return weights


def load_class_weights(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """``(num_classes,)`` float64 class weights read from a file.

    Accepted: a ``refineseg check-data`` report (JSON/YAML mapping with ``"classes"``: a list, in
    class-index order, of ``{"pixels": int, "image_pixels": int, ...}``), turned into
    median-frequency weights; a JSON/YAML list of numbers; or text with one number per line
    (blank lines and ``#`` comments skipped). Problems raise ``DataError("<path>: <cause>")``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise file_error(DataError, path, f"cannot read class weights ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = [float(line) for line in (raw.split("#", 1)[0].strip() for raw in text.splitlines()) if line]
    except (ValueError, yaml.YAMLError) as e:
        raise file_error(DataError, path, f"not a class-weights file ({' '.join(str(e).split())})") from None
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        try:
            pixels = [_count(c["pixels"]) for c in data["classes"]]
            image_pixels = [_count(c["image_pixels"]) for c in data["classes"]]
        except (TypeError, KeyError, ValueError) as e:
            raise file_error(
                DataError,
                path,
                f"every entry of 'classes' needs integer 'pixels' and 'image_pixels' ({type(e).__name__}: {e})",
            ) from None
        if len(pixels) != num_classes:
            raise file_error(DataError, path, f"{len(pixels)} classes, expected {num_classes}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                weights = class_weights_from_counts(np.array(pixels), np.array(image_pixels))
        except ValueError as e:
            raise file_error(DataError, path, str(e)) from None
        unseen = [c for c, n in enumerate(pixels) if n == 0]
        if unseen:
            warnings.warn(f"{path}: classes {unseen} have no pixels; giving them weight 1", stacklevel=2)
        return weights
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise file_error(DataError, path, "expected a list of numbers or a data report with 'classes'")
    weights = np.asarray(data, dtype=np.float64)
    if weights.size != num_classes:
        raise file_error(DataError, path, f"{weights.size} class weights, expected {num_classes}")
    if not np.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
        raise file_error(DataError, path, "class weights must be finite, >= 0 and not all 0")
    return weights


def _count(value) -> int:
    """A non-negative integer pixel count from a report value (rejects bools, floats with fractions)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ValueError(f"bad pixel count {value!r}")
    return int(value)
