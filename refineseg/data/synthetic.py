"""A built-in synthetic segmentation dataset: no download, deterministic, small but not trivial.

Each sample is drawn on the fly from its own random generator seeded by ``(seed, split, index)``,
so sample ``i`` is the same whatever the access order or worker. Scenes contain:

* ``background``: a smooth colour gradient;
* ``disk`` and ``square`` (rotated): large flat shapes;
* ``stripes``: a rotated ellipse filled with stripes whose mean colour is *exactly* the square's
  colour, so the two classes differ only in texture and shape;
* ``wire``: thin polylines 1-3 px wide (fine detail that coarse features lose);
* ``dot``: small disks of radius 3-6 px.

Edges are sharp (no anti-aliasing) and Gaussian noise is mild, so a small CNN can learn it well.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from refineseg.data.datasets import SegmentationDataset, Transform
from refineseg.data.io import PathLike, write_image, write_label_png
from refineseg.utils.palette import color_palette

SYNTHETIC_CLASSES = ["background", "disk", "square", "stripes", "wire", "dot"]
BACKGROUND, DISK, SQUARE, STRIPES, WIRE, DOT = range(len(SYNTHETIC_CLASSES))
#: Display colours of the labels (not the rendered image colours).
SYNTHETIC_PALETTE = color_palette(len(SYNTHETIC_CLASSES))

# Nominal image colours; each image jitters them a little (square and stripes together).
_DISK_RGB = (40, 110, 220)
_FLAT_RGB = (180, 170, 60)  # square colour == mean colour of the stripes
_STRIPE_DELTA = 45  # stripes alternate FLAT + delta and FLAT - delta
_WIRE_RGB = (240, 240, 240)
_DOT_RGB = (220, 40, 40)
_JITTER = 12
_NOISE_STD = 4.0
_DEFAULT_COUNTS = {"train": 500, "val": 100}


def _rotated_polygon(cx: float, cy: float, rx: float, ry: float, angle: float, n: int) -> list[tuple]:
    """Vertices of a rotated ellipse (n large) or rectangle (n = 4, half sizes rx, ry)."""
    ca, sa = math.cos(angle), math.sin(angle)
    if n == 4:
        local = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
    else:
        local = [(rx * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in local]


def _draw_labels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rasterise a random scene into an (H, W) uint8 label map (later shapes occlude earlier ones)."""
    canvas = Image.new("L", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    s = min(height, width)
    shapes = [DISK] * int(rng.integers(1, 3)) + [SQUARE] * int(rng.integers(1, 3)) + [STRIPES] * int(rng.integers(1, 3))
    rng.shuffle(shapes)
    for cls in shapes:
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        angle = rng.uniform(0, math.pi)
        if cls == DISK:
            r = rng.uniform(0.08, 0.18) * s
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=cls)
        elif cls == SQUARE:
            half = rng.uniform(0.08, 0.16) * s
            draw.polygon(_rotated_polygon(cx, cy, half, half, angle, 4), fill=cls)
        else:
            rx, ry = rng.uniform(0.1, 0.2) * s, rng.uniform(0.07, 0.14) * s
            draw.polygon(_rotated_polygon(cx, cy, rx, ry, angle, 48), fill=cls)
    for _ in range(int(rng.integers(1, 4))):
        points = [
            (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height) for _ in range(int(rng.integers(2, 5)))
        ]
        wire_width = int(rng.choice([1, 2, 3], p=[0.25, 0.35, 0.4]))
        draw.line(points, fill=WIRE, width=wire_width)
    for _ in range(int(rng.integers(3, 9))):
        r = rng.uniform(3.0, 6.0)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=DOT)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Paint an (H, W, 3) uint8 image for a label map: class colours, stripe texture, noise."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    theta = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    c0, c1 = rng.uniform(15, 85, size=3), rng.uniform(15, 85, size=3)
    image = c0 + ramp[..., None] * (c1 - c0)

    def jitter(rgb: Sequence[int]) -> np.ndarray:
        return np.asarray(rgb, dtype=np.float32) + rng.uniform(-_JITTER, _JITTER, size=3)

    flat = jitter(_FLAT_RGB)
    image[labels == DISK] = jitter(_DISK_RGB)
    image[labels == SQUARE] = flat
    image[labels == WIRE] = jitter(_WIRE_RGB)
    image[labels == DOT] = jitter(_DOT_RGB)

    period = rng.uniform(6.0, 10.0)
    phi = rng.uniform(0, math.pi)
    phase = (xx * math.cos(phi) + yy * math.sin(phi)) / period + rng.uniform(0, 1)
    sign = np.where(phase - np.floor(phase) < 0.5, 1.0, -1.0).astype(np.float32)
    striped = labels == STRIPES
    image[striped] = flat + _STRIPE_DELTA * sign[striped][:, None]

    image += rng.normal(0.0, _NOISE_STD, size=image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one sample: independent streams per (seed, split, index)."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def make_synthetic_sample(
    seed: int, split: str, index: int, size: tuple[int, int] = (128, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """Generate sample ``index``: (H, W, 3) uint8 image and (H, W) uint8 labels."""
    rng = sample_rng(seed, split, index)
    labels = _draw_labels(rng, size[0], size[1])
    return _render(rng, labels), labels


class SyntheticSegmentation(SegmentationDataset):
    """In-memory synthetic dataset (6 classes) with the same interface as the file-based ones.

    ``num_samples`` defaults to 500 for ``train`` and 100 for other splits; ``size`` is (H, W).
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        size: int | tuple[int, int] = (128, 128),
        seed: int = 0,
        transform: Transform | None = None,
    ):
        super().__init__([], SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, transform)
        self.split = split
        self.num_samples = _DEFAULT_COUNTS.get(split, 100) if num_samples is None else int(num_samples)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def sample_name(self, index: int) -> str:
        return f"{self.split}_{index:05d}"

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        return make_synthetic_sample(self.seed, self.split, index, self.size)


def write_synthetic(
    out_dir: PathLike, num_train: int = 200, num_val: int = 50, size: int | tuple[int, int] = (128, 128), seed: int = 0
) -> str:
    """Write the synthetic dataset in the folder layout that :class:`FolderDataset` reads.

    Creates ``images/<split>_<i>.png``, ``masks/<split>_<i>.png`` (palette index PNGs),
    ``classes.yaml`` and ``splits/{train,val}.txt``; returns ``out_dir``. The arrays read back
    by ``FolderDataset(out_dir, split)`` equal ``SyntheticSegmentation(split, ..., seed=seed)``.
    """
    import yaml

    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "splits"), exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        dataset = SyntheticSegmentation(split, count, size, seed)
        names = []
        for i in range(count):
            image, labels = dataset.load_sample(i)
            name = dataset.sample_name(i)
            write_image(os.path.join(out_dir, "images", name + ".png"), image)
            write_label_png(os.path.join(out_dir, "masks", name + ".png"), labels, SYNTHETIC_PALETTE)
            names.append(name)
        with open(os.path.join(out_dir, "splits", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in names))
    classes = [{"name": n, "color": list(c)} for n, c in zip(SYNTHETIC_CLASSES, SYNTHETIC_PALETTE)]
    with open(os.path.join(out_dir, "classes.yaml"), "w", encoding="utf-8") as f:
        f.write(f"# refineseg synthetic dataset, seed {seed}; label colours of the masks\n")
        yaml.safe_dump(classes, f, sort_keys=False, default_flow_style=None)
    return out_dir
