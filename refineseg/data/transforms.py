"""Joint image/mask transforms built on albumentations 2.0, returning normalised tensors.

Masks are only ever resampled with nearest neighbour, and padding writes ``ignore_index`` into
the mask, so augmented masks hold the original labels plus 255 and nothing else.

Seeding. albumentations 2 ignores ``np.random.seed`` / ``torch.manual_seed``: every ``Compose``
owns a numpy Generator and a ``random.Random``. :class:`PairTransform` replaces them before each
sample with generators derived from

* ``(seed, epoch, index)`` when built with ``seed=<int>`` and used through a
  :class:`~refineseg.data.SegmentationDataset` (which calls ``set_sample_seed(index)``; call
  ``dataset.set_epoch(epoch)`` before each epoch). Sample ``index`` in epoch ``epoch`` then gets
  the same augmentation whatever the number of DataLoader workers or the shuffling order.
  ``set_epoch`` must reach the workers: with ``persistent_workers=True`` it does not, so keep
  the default ``persistent_workers=False`` (workers are re-created, with the new epoch, each epoch);
* otherwise, a seed drawn from torch's global generator on every call. DataLoader seeds torch
  in each worker from the main process's generator, so ``torch.manual_seed(s)`` still makes a
  run reproducible for a fixed ``num_workers``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from refineseg.errors import MissingDependencyError
from refineseg.models.config import IMAGENET_MEAN, IMAGENET_STD


def _albumentations() -> tuple[Any, Any]:
    """Import albumentations (optional "train" extra) and cv2 without the online version check."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations as A
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            f"data augmentation needs albumentations ({exc.name} is not installed): pip install 'refineseg[train]'"
        ) from exc
    return A, cv2


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def denormalize(
    tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo :func:`normalize`: (3, H, W) -> (H, W, 3) uint8, or (N, 3, H, W) -> (N, H, W, 3)."""
    t = tensor.detach().float().cpu()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (t * s + m).mul(255.0).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


class PairTransform:
    """Callable ``(image uint8 (H,W,3), mask uint8 (H,W)) -> (float32 (3,H,W), int64 (H,W))``.

    Runs an albumentations ``Compose`` (may be None) on both arrays, then normalises the image.
    See the module docstring for how ``seed``, ``set_epoch`` and ``set_sample_seed`` work.
    """

    def __init__(
        self,
        augment: Any,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
        randomized: bool = True,
    ):
        self.augment = augment
        self.randomized = randomized  # False: augment is deterministic, skip reseeding
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.seed = seed
        self.epoch = 0
        self._pending: int | None = None  # index set by set_sample_seed, used by the next call

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_sample_seed(self, index: int) -> None:
        """Make the next call's randomness a function of (seed, epoch, index) only."""
        self._pending = int(index)

    def _reseed(self) -> None:
        if self.seed is not None and self._pending is not None:
            entropy = [int(self.seed), self.epoch, self._pending]
        else:  # follow torch's global generator (seeded per worker by DataLoader)
            entropy = [int(torch.randint(0, 2**62, (1,)).item())]
        self._pending = None
        seq = np.random.SeedSequence(entropy)
        py_seed = int(seq.generate_state(2, dtype=np.uint64)[1])
        self.augment.set_random_state(np.random.default_rng(seq), random.Random(py_seed))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            if self.randomized:
                self._reseed()
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return normalize(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(mask)).long()

    def __repr__(self) -> str:
        return f"PairTransform(seed={self.seed}, augment={self.augment!r})"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def train_transform(
    crop: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    seed: int | None = None,
) -> PairTransform:
    """Training augmentation: colour jitter, random scale, pad, random crop to ``crop``, flip.

    Scaling is bilinear for the image and nearest for the mask; regions padded to reach the crop
    size get the mean colour in the image (0 after normalisation) and ``ignore_index`` in the mask.
    """
    A, cv2 = _albumentations()
    height, width = _pair(crop)
    lo, hi = scale_range
    fill = tuple(round(255 * v) for v in mean)
    augment = A.Compose(
        [
            # Photometric jitter first, so padding below stays exactly the mean colour (0 once normalised).
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
            A.RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            ),
            A.PadIfNeeded(
                min_height=height,
                min_width=width,
                position="random",
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                fill_mask=ignore_index,
            ),
            A.RandomCrop(height=height, width=width),
            A.HorizontalFlip(p=0.5),
        ],
        mask_interpolation=cv2.INTER_NEAREST,
    )
    return PairTransform(augment, mean, std, seed)


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int | Sequence[int] | None = None,
) -> PairTransform:
    """Evaluation transform: optional resize, then normalise.

    ``resize=int`` scales the shorter side to that length (aspect kept); ``resize=(h, w)`` resizes
    to exactly that size; ``None`` keeps the image as is. The mask is resized with nearest.
    """
    if resize is None:
        return PairTransform(None, mean, std)
    A, cv2 = _albumentations()
    if isinstance(resize, int):
        op = A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
    else:
        h, w = _pair(resize)
        op = A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
    augment = A.Compose([op], mask_interpolation=cv2.INTER_NEAREST)
    return PairTransform(augment, mean, std, randomized=False)
