"""Pictures and tables: label colouring, photo overlays with a legend, training curves, confusion plots.

Colouring and overlays use only numpy + PIL. The plotting functions import matplotlib lazily and
draw on an Agg canvas (no pyplot, no global backend switch), so ``import refineseg`` never loads
matplotlib and plots work on headless machines.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from refineseg.errors import MissingDependencyError
from refineseg.utils.files import atomic_write
from refineseg.utils.palette import IGNORE_COLOR


def colorize(labels: np.ndarray, palette: Sequence[tuple[int, int, int]], ignore_index: int | None = 255) -> np.ndarray:
    """Map an (H, W) integer label map to an (H, W, 3) uint8 RGB image; ``ignore_index`` gets ``IGNORE_COLOR``."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    safe = np.where(ignored, 0, labels)  # keeps the (small) label dtype: no int64 copy of huge maps
    if safe.size and (safe.min() < 0 or safe.max() >= len(lut)):
        raise ValueError(
            f"labels must be in [0, {len(lut)}) (palette size) or {ignore_index}, "
            f"got range [{safe.min()}, {safe.max()}]"
        )
    out = lut[safe]
    out[ignored] = IGNORE_COLOR
    return out


def _present_labels(labels: np.ndarray) -> list[int]:
    """Sorted distinct values of a label map; a flag table instead of np.unique's sort when the range is small."""
    if labels.size == 0:
        return []
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > 65535:
        return np.unique(labels).tolist()
    flags = np.zeros(hi + 1, dtype=bool)
    flags[labels] = True
    return np.flatnonzero(flags).tolist()


def _load_font(size: int) -> tuple[Any, bool]:
    """PIL's default font at ``size`` px when FreeType is available (Pillow >= 10.1); else the small bitmap font."""
    try:
        return ImageFont.load_default(size=size), True
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default(), False


def _legend(entries: list[tuple[tuple[int, int, int], str]], row_h: int, max_rows: int) -> Image.Image:
    """White legend panel: one row per (colour, name), a swatch then the name; extra columns past ``max_rows``."""
    font, scalable = _load_font(max(8, round(row_h * 0.6)))
    if not scalable and row_h > 20:
        # Bitmap font cannot grow: draw at a small size and enlarge the whole panel instead.
        small = _legend(entries, 16, max_rows)
        scale = row_h / 16
        return small.resize((round(small.width * scale), round(small.height * scale)), Image.NEAREST)

    pad = max(2, row_h // 4)
    swatch = row_h - pad
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(math.ceil(measure.textlength(name, font=font)) for _, name in entries)
    col_w = pad + swatch + pad + text_w + pad
    rows = min(len(entries), max_rows)
    cols = math.ceil(len(entries) / rows)
    panel = Image.new("RGB", (cols * col_w + pad, rows * row_h + pad), "white")
    draw = ImageDraw.Draw(panel)
    for k, (color, name) in enumerate(entries):
        x = pad + (k // rows) * col_w
        y = pad + (k % rows) * row_h
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(color), outline=(96, 96, 96))
        if scalable:
            draw.text((x + swatch + pad, y + swatch / 2), name, fill="black", font=font, anchor="lm")
        else:
            draw.text((x + swatch + pad, y + max(0, (swatch - 11) // 2)), name, fill="black", font=font)
    return panel


OVERLAY_BAND_ROWS = 256  # overlay() blends this many rows at a time


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    legend: bool = True,
    ignore_index: int | None = 255,
) -> Image.Image:
    """Blend the coloured label map over an (H, W, 3) uint8 photo; optionally add a legend on the right.

    The photo occupies the top-left H x W of the result. The legend lists only the classes present in
    ``labels`` (plus "ignore" if ignored pixels occur); its row height grows with the image height
    (about 1/30 of it, at least 16 px) so it stays readable on small and very large images. When the
    legend is taller than the photo the canvas is extended downwards with white.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    image = image[:, :, :3]
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    h, w = image.shape[:2]
    panel = _legend_panel(labels, palette, class_names, ignore_index, h) if legend else None
    size = (w + panel.width, max(h, panel.height)) if panel is not None else (w, h)
    canvas = Image.new("RGB", size, "white")
    # PIL blends in C on uint8 rows, a band of rows at a time straight into the result: no float copies
    # and no full-size intermediate images of very large photos; alpha=0 returns the photo exactly.
    for y in range(0, h, OVERLAY_BAND_ROWS):
        rows = slice(y, y + OVERLAY_BAND_ROWS)
        band = Image.blend(
            Image.fromarray(np.ascontiguousarray(image[rows])),
            Image.fromarray(colorize(labels[rows], palette, ignore_index)),
            alpha,
        )
        canvas.paste(band, (0, y))
    if panel is not None:
        canvas.paste(panel, (w, 0))
    return canvas


def _legend_panel(
    labels: np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    class_names: Sequence[str] | None,
    ignore_index: int | None,
    h: int,
) -> Image.Image | None:
    """The legend of :func:`overlay` for a photo ``h`` px high: the classes present in ``labels``; None if none."""
    entries = []
    for idx in _present_labels(labels):
        if idx == ignore_index:
            entries.append((IGNORE_COLOR, "ignore"))
        else:
            name = class_names[idx] if class_names is not None and idx < len(class_names) else str(idx)
            entries.append((tuple(palette[idx]), str(name)))
    if not entries:
        return None
    row_h = max(16, round(h / 30))
    max_rows = max(10, (h - row_h // 4) // row_h)  # fill the photo height first, then add columns
    return _legend(entries, row_h, max_rows)


def _agg_figure(figsize: tuple[float, float]):
    """A matplotlib Figure bound to an Agg canvas (headless, no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # optional dependency (the "train" extra)
        raise MissingDependencyError(
            f"plots need matplotlib ({e.name} is not installed): pip install 'refineseg[train]'"
        ) from None

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure as ``path`` (format from the suffix) atomically, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:  # the temporary name keeps the suffix matplotlib reads the format from
        fig.savefig(tmp)
    return path


# (key in the records, file name, y-axis label)
_CURVES = [("loss", "loss.png", "training loss"), ("lr", "lr.png", "learning rate"), ("mIoU", "miou.png", "val mIoU")]


def plot_curves(records: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write loss.png, lr.png and miou.png from metrics.jsonl records against their ``iter``.

    A plot is skipped when its key never appears with a finite value. Returns the paths written.
    """
    out_dir = Path(out_dir)
    written = []
    for key, filename, ylabel in _CURVES:
        points = [
            (r.get("iter", i), float(r[key]))
            for i, r in enumerate(records)
            if isinstance(r.get(key), numbers.Real) and math.isfinite(r[key])
        ]
        if not points:
            continue
        xs, ys = zip(*sorted(points))
        fig = _agg_figure((6.4, 4.0))
        ax = fig.add_subplot()
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.2)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if key == "mIoU":
            best = int(np.argmax(ys))
            ax.set_title(f"best mIoU {100 * ys[best]:.2f}% at iter {xs[best]}")
        written.append(save_figure(fig, out_dir / filename))
    return written


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, normalize: bool = True
) -> Path:
    """Write a (C, C) confusion matrix (rows = ground truth) as a PNG heat map with labelled axes.

    With ``normalize`` each row is divided by its sum (rows without pixels stay 0), so the diagonal
    shows per-class recall. Cell values are printed when there are at most 25 classes.
    """
    mat = np.asarray(matrix, dtype=np.float64)
    c = mat.shape[0]
    if mat.shape != (c, c) or len(class_names) != c:
        raise ValueError(f"need a square matrix and one name per class, got {mat.shape} and {len(class_names)} names")
    if normalize:
        sums = mat.sum(axis=1, keepdims=True)
        mat = np.divide(mat, sums, out=np.zeros_like(mat), where=sums > 0)

    side = min(40.0, max(5.0, 0.35 * c + 2.5))
    fontsize = 8 if c <= 40 else 5
    fig = _agg_figure((side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=list(class_names), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(c), labels=list(class_names), fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix" + (" (row-normalized)" if normalize else ""))
    if c <= 25:
        top = mat.max() if mat.size else 0.0
        for i in range(c):
            for j in range(c):
                text = f"{mat[i, j]:.2f}" if normalize else f"{int(mat[i, j])}"
                color = "white" if top > 0 and mat[i, j] > 0.6 * top else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize - 1, color=color)
    return save_figure(fig, path)


def _cell(value: Any) -> str:
    """Table cell text: ints with thousands separators, floats with 2 decimals, None/missing empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return f"{float(value):,.2f}" if math.isfinite(value) else str(float(value))
    return str(value).replace("|", "\\|")


def model_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Markdown pipe table with padded columns; numeric columns are right-aligned (``---:``).

    Example: ``model_table([{"model": "refinenet-lw", "params": 3012345}], ["model", "params"])``.
    """
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = [
        all(
            isinstance(row.get(col), numbers.Real) and not isinstance(row.get(col), bool)
            for row in rows
            if row.get(col) is not None
        )
        and any(row.get(col) is not None for row in rows)
        for col in columns
    ]
    widths = [max([len(str(col)), 3] + [len(r[k]) for r in cells]) for k, col in enumerate(columns)]

    def line(parts: list[str]) -> str:
        return "| " + " | ".join(parts) + " |"

    out = [line([str(col).ljust(w) for col, w in zip(columns, widths)])]
    out.append(line([("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)]))
    for r in cells:
        out.append(line([t.rjust(w) if num else t.ljust(w) for t, w, num in zip(r, widths, numeric)]))
    return "\n".join(out)


def plot_class_frequencies(
    report: dict[str, Any],
    palette: Sequence[Sequence[int]],
    path: str | os.PathLike,
    title: str = "",
    log_scale: bool = True,
) -> Path:
    """Bar chart of each class's share of the labelled pixels (%), bars in the class colours."""
    classes = report["classes"]
    shares = [100.0 * c["share"] for c in classes]
    fig = _agg_figure((min(40.0, max(6.4, 0.3 * len(classes) + 2.0)), 4.8))
    ax = fig.add_subplot()
    colors = [tuple(v / 255.0 for v in palette[i][:3]) for i in range(len(classes))]
    bars = ax.bar(range(len(classes)), shares, color=colors, edgecolor="black", linewidth=0.5)
    ax.set_xticks(
        range(len(classes)), labels=[c["name"] for c in classes], rotation=90, fontsize=8 if len(classes) <= 40 else 5
    )
    ax.set_xlim(-0.6, len(classes) - 0.4)
    if len(classes) <= 40:
        ax.bar_label(bars, labels=[f"{s:.3g}" for s in shares], fontsize=7, padding=1)
    positive = [s for s in shares if s > 0]
    if log_scale and positive:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")  # bars start a decade below the rarest class, ticks as plain percentages
        ax.set_ylim(10.0 ** np.floor(np.log10(min(positive)) - 1), max(positive) * 2.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("class")
    ax.set_ylabel("pixels (%) of the labelled pixels")
    ax.set_title(title or "class frequencies")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)
