"""Tiled inference for images of any size in memory bounded by the tile, not the image.

Tiles of ``tile × tile`` pixels are laid every ``tile - overlap`` pixels along each axis (the
last one along an axis is cut at the border). Each tile's logits are weighted by a separable
window that ramps linearly from 0 to 1 over ``overlap`` pixels on every side that touches
another tile, so neighbouring tiles blend smoothly instead of meeting at a seam.

Tiles run in raster order and only two small buffers of weighted logits are kept: the strip of
``overlap`` rows shared with the next row of tiles (C × overlap × W, stored as float16; one buffer,
refilled in place by the next row as it reads it) and the ``overlap`` columns shared with the next
tile (C × tile × overlap). A pixel's label is final once the last tile covering it is done; it goes
straight into the uint8 label map. No float tensor of the full image is ever allocated, and rows of
a memory-mapped input are released once done. :func:`preview` makes the small copies an overlay
of such an image is drawn from, reading a memory-mapped input band by band in the same way.

When one tile covers the whole image the result equals whole-image inference exactly.

``tile_batch`` > 1 (``predict --tile-batch N``) runs up to N tiles of equal size per forward
pass, which keeps a GPU busy; the memory bound becomes N × one tile's activations and logits
(N × tile² pixels) plus the same carried strips. Labels are those of one tile at a time (tested
equal); logits may differ by float rounding, as some kernels sum in another order per batch size.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from refineseg.inference.predictor import preprocess
from refineseg.models import MIN_SIDE
from refineseg.utils.device import model_device


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of tiles along one axis: every ``tile - overlap`` pixels, last cut short."""
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [(k * stride, min(k * stride + tile, length)) for k in range(count)]


def blend_window(start: int, end: int, prev_end: int | None, next_start: int | None) -> torch.Tensor:
    """1-D weights of a tile spanning [start, end): linear ramps over the parts shared with neighbours.

    The ramp of the overlap with the previous tile, [start, prev_end), rises from 0 to 1; the ramp
    of the overlap with the next one, [next_start, end), falls from 1 to 0. Two neighbours' ramps
    over the same pixels sum to 1.
    """
    w = torch.ones(end - start)
    if prev_end is not None and prev_end > start:
        n = prev_end - start
        w[:n] = torch.minimum(w[:n], (torch.arange(n) + 0.5) / n)
    if next_start is not None and next_start < end:
        n = end - next_start
        w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n) + 0.5) / n)
    return w


def _windows(spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    return [
        blend_window(s, e, spans[k - 1][1] if k > 0 else None, spans[k + 1][0] if k + 1 < len(spans) else None)
        for k, (s, e) in enumerate(spans)
    ]


def _release_rows(image: np.ndarray, stop: int) -> None:
    """Drop the resident pages of a memory-mapped image's rows ``< stop``: they are never read again.

    A memory-mapped input (an uncompressed TIFF) then occupies about one row of tiles in RAM
    instead of growing to the whole file as the scan proceeds. In-memory arrays are left alone.
    """
    mapping = getattr(image, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise") or not image.flags.c_contiguous:
        return
    start_in_file = image.offset - image.offset % mmap.ALLOCATIONGRANULARITY  # where the mapping begins
    end = image.offset - start_in_file + stop * image.strides[0]
    end -= end % mmap.PAGESIZE
    if end > 0:
        mapping.madvise(mmap.MADV_DONTNEED, 0, end)


def _run(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (n, C, h, w) for a batch of equal-size tiles (n, 3, h, w); tiles thinner than the
    models' minimum are edge-padded."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return model(x)[:, :, :h, :w].float()


@torch.inference_mode()
def tile_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    rows: Sequence[tuple[int, int]],
    cols: Sequence[tuple[int, int]],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    tile_batch: int = 1,
) -> Iterator[torch.Tensor]:
    """Logits (C, h, w) of every tile ``rows × cols`` of ``image``, in raster order.

    The next ``tile_batch`` tiles are read together, grouped by size (tiles at the right and
    bottom edges are cut short; nothing is padded, so each tile's logits are those of its own
    pixels) and each group runs as one (n, 3, h, w) forward pass. At most ``tile_batch`` tiles'
    inputs, activations and logits are alive at a time. The results equal those of one tile at a
    time up to float rounding: some convolution kernels sum in another order for another batch size.
    """
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    spans = [(r, c) for r in rows for c in cols]
    for start in range(0, len(spans), tile_batch):
        chunk = spans[start : start + tile_batch]
        groups: dict[tuple[int, int], list[int]] = {}
        for k, ((y0, y1), (x0, x1)) in enumerate(chunk):
            groups.setdefault((y1 - y0, x1 - x0), []).append(k)
        results: list[torch.Tensor | None] = [None] * len(chunk)
        for members in groups.values():
            x = torch.cat(
                [preprocess(image[y0:y1, x0:x1], mean, std) for (y0, y1), (x0, x1) in (chunk[k] for k in members)]
            ).to(device)
            for k, logits in zip(members, _run(model, x)):
                results[k] = logits
        for k in range(len(results)):
            yield results[k]
            results[k] = None  # let the consumer's copy be the only reference


def _check_tiling(tile: int, overlap: int, tile_batch: int) -> None:
    """ValueError naming the first bad tiling option."""
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if tile < MIN_SIDE:
        raise ValueError(f"tile must be >= {MIN_SIDE}, got {tile}")


@torch.inference_mode()
def predict_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    tile: int = 1024,
    overlap: int = 128,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    out: np.ndarray | None = None,
    progress: bool = True,
    tile_batch: int = 1,
) -> np.ndarray:
    """Segment an (H, W, 3) uint8 image of any size tile by tile -> (H, W) uint8 labels.

    ``model`` maps a normalized (n, 3, h, w) float batch to logits (n, C, h, w) (a
    SegmentationModel, an optimized wrapper or an ONNX session wrapper). ``image`` may be a
    numpy memmap: only the current tiles are read. ``out`` may be a preallocated (H, W) uint8
    array (e.g. a memmap) to write into. ``mean``/``std`` default to ``model.config``.
    ``tile_batch`` tiles of equal size run per forward pass (see :func:`tile_logits`): faster on
    a GPU with room to spare; memory grows to about ``tile_batch`` × one tile's activations.
    """
    _check_tiling(tile, overlap, tile_batch)
    config = getattr(model, "config", None)
    mean = mean or config.mean
    std = std or config.std
    device = model_device(model)

    height, width = image.shape[:2]
    labels = np.empty((height, width), np.uint8) if out is None else out
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    row_windows, col_windows = _windows(rows), _windows(cols)
    tiles = tile_logits(model, image, rows, cols, mean, std, device, tile_batch)
    carry: torch.Tensor | None = None  # weighted logits of the rows this row of tiles shares with the one above
    bar = tqdm(total=len(rows) * len(cols), desc="tiles", disable=not progress or None, dynamic_ncols=True)
    for i, (y0, y1) in enumerate(rows):
        y_final = rows[i + 1][0] if i + 1 < len(rows) else y1  # rows < y_final are done after this row
        right: torch.Tensor | None = None  # weighted logits of columns shared with the next tile
        strip: torch.Tensor | None = None  # weighted logits of the rows shared with the next row of tiles
        for j, (x0, x1) in enumerate(cols):
            x_final = cols[j + 1][0] if j + 1 < len(cols) else x1
            logits = next(tiles)
            acc = logits * (row_windows[i][:, None] * col_windows[j][None, :]).to(logits.device)
            del logits  # the next tile's forward pass runs without this tile's raw logits
            if right is not None:  # includes the carried rows above for these columns
                acc[:, :, : right.shape[2]] += right
            if carry is not None:
                done = cols[j - 1][1] - x0 if j > 0 else 0  # columns already added through `right`
                acc[:, : carry.shape[1], done:] += carry[:, :, x0 + done : x1].to(acc)
            tile_labels = acc[:, : y_final - y0, : x_final - x0].argmax(0).to(torch.uint8)
            labels[y0:y_final, x0:x_final] = tile_labels.cpu().numpy()
            if y_final < y1:
                strip = strip if strip is not None else _strip_for(carry, acc.shape[0], y1 - y_final, width, acc.device)
                # Refilled in place when it is `carry`: later tiles of this row read its columns >= x1 only.
                strip[:, :, x0:x_final] = acc[:, y_final - y0 :, : x_final - x0]
            right = acc[:, :, x_final - x0 :] if x_final < x1 else None
            bar.update(1)
        carry = strip
        _release_rows(image, y_final)
    bar.close()
    return labels


def _strip_for(carry: torch.Tensor | None, classes: int, rows: int, width: int, device: torch.device) -> torch.Tensor:
    """The buffer for the next carried strip: ``carry`` itself when its shape fits (always, but after a
    short last row of tiles), else a new float16 one."""
    if carry is not None and carry.shape == (classes, rows, width):
        return carry
    return torch.zeros(classes, rows, width, dtype=torch.float16, device=device)


def downsample(image: np.ndarray, step: int, band: int = 256) -> np.ndarray:
    """A contiguous copy of ``image[::step, ::step]``, read ``band`` output rows at a time.

    The pages of a memory-mapped ``image`` are released after each band (see :func:`_release_rows`),
    so only about one band of the file is resident, not every ``step``-th row of it.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    height = image.shape[0]
    out = np.empty((-(-height // step), -(-image.shape[1] // step), *image.shape[2:]), image.dtype)
    for k in range(0, out.shape[0], band):
        out[k : k + band] = image[k * step : (k + band) * step : step, ::step]
        _release_rows(image, min(height, (k + band) * step))
    return out


def preview(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` downsampled by the smallest integer step that fits both within ``side`` px.

    Contiguous copies (see :func:`downsample`), made for drawing an overlay of a huge image; the
    inputs themselves when they already fit.
    """
    step = max(1, -(-max(labels.shape) // side))
    if step == 1:
        return image, labels
    return downsample(image, step), np.ascontiguousarray(labels[::step, ::step])
