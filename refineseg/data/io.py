"""Reading images and label masks from disk, with one-line errors that name the bad file.

Every reader forces a full decode (``Image.load()``), so a truncated PNG or JPEG raises a
:class:`~refineseg.errors.DataError` here instead of being silently padded with grey later.
Multi-frame files (animated GIF/PNG/WebP, multi-page TIFF) give their first frame, with a note
logged once per file. Writers go through :func:`refineseg.utils.files.atomic_write`: a temporary name
renamed into place, so an interrupted write never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from refineseg.errors import DataError, MissingDependencyError, file_error
from refineseg.utils.files import atomic_write
from refineseg.utils.palette import IGNORE_COLOR

log = logging.getLogger("refineseg.data")

PathLike = str | os.PathLike

#: Image files that folders are searched for (datasets and `refineseg predict`), lower case.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

#: Suffixes that :func:`read_large_image` hands to ``tifffile`` instead of Pillow.
TIFF_SUFFIXES = (".tif", ".tiff")

_noted_multiframe: set[str] = set()  # files already reported as multi-frame (one note per file)


def note_first_frame(path: PathLike, frames: int) -> None:
    """Log, once per file, that only the first of ``frames`` frames (or pages) of ``path`` is used."""
    key = os.path.realpath(path)
    if frames > 1 and key not in _noted_multiframe:
        _noted_multiframe.add(key)
        log.warning("note: %s: %d frames, using the first", os.fspath(path), frames)


def _open_loaded(path: PathLike) -> Image.Image:
    """Open ``path`` with Pillow and decode all pixels, turning every failure into a DataError."""
    if not os.path.exists(path):
        raise file_error(DataError, path, "file not found")
    if os.path.isdir(path):
        raise file_error(DataError, path, "is a directory, expected an image file")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise file_error(DataError, path, "not an image file (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise file_error(
            DataError, path, f"image too large for the normal reader ({exc}); use read_large_image"
        ) from None
    except OSError as exc:
        raise file_error(DataError, path, f"cannot open image ({exc})") from None
    try:
        frames = getattr(img, "n_frames", 1)  # counted before load(): it may seek, then returns to frame 0
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise file_error(DataError, path, f"corrupt or truncated image ({exc})") from None
    note_first_frame(path, frames)
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # never pad a truncated file, even if someone enabled it
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise file_error(DataError, path, f"image too large ({exc}); use read_large_image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise file_error(DataError, path, f"corrupt or truncated image ({exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return img


def _array_to_rgb8(arr: np.ndarray, path: PathLike) -> np.ndarray:
    """Convert a decoded array (H,W), (H,W,C) of any common dtype to (H,W,3) uint8.

    16-bit data is scaled by 255/65535; float data in [0, 1] is scaled by 255; alpha is dropped.
    """
    if arr.dtype.byteorder == (">" if np.little_endian else "<"):
        arr = arr.astype(arr.dtype.newbyteorder("="))  # e.g. Pillow's big-endian 'I;16B'
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif arr.dtype in (np.int32, np.uint32, np.int64, np.int16):
        # Pillow's 'I' mode holds 16-bit grey PNG/TIFF data widened to int32.
        out = (np.clip(arr, 0, 65535).astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        out = (np.clip(np.nan_to_num(arr) * scale, 0, 255) + 0.5).astype(np.uint8)
    else:
        raise file_error(DataError, path, f"unsupported pixel type {arr.dtype}")
    if out.ndim == 2:
        out = out[:, :, None]
    if out.ndim != 3:
        raise file_error(DataError, path, f"unsupported image shape {arr.shape}")
    channels = out.shape[2]
    if channels in (1, 2):  # grey, grey + alpha
        out = np.repeat(out[:, :, :1], 3, axis=2)
    elif channels >= 3:  # RGB, RGBA, or extra channels
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def _pil_to_rgb8(img: Image.Image, path: PathLike) -> np.ndarray:
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode.startswith("I") or img.mode == "F":
        return _array_to_rgb8(np.asarray(img), path)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning; alpha is dropped below
    # L, 1, LA, P, PA, RGBA, RGBX, CMYK, YCbCr, LAB, HSV: Pillow knows how to get RGB.
    # RGBA -> RGB drops alpha without compositing, which is what we want for photos.
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: PathLike) -> np.ndarray:
    """Read a photo as an (H, W, 3) uint8 RGB array.

    Grey, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted rather than rejected.
    Raises DataError for a missing, non-image, corrupt or truncated file.
    """
    with _open_loaded(path) as img:
        return _pil_to_rgb8(img, path)


def _mask_from_pil(img: Image.Image, path: PathLike) -> np.ndarray | None:
    """Class-index array (H, W) uint8 for single-channel masks, ``None`` for colour masks."""
    mode = img.mode
    if mode in ("P", "L", "1"):
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("PA", "LA"):
        return np.asarray(img.getchannel(0), dtype=np.uint8).copy()
    if mode.startswith("I"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise file_error(
                DataError, path, f"{mode} mask has values in {arr.min()}..{arr.max()}; expected class indices 0..255"
            )
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA", "RGBX"):
        return None
    raise file_error(DataError, path, f"unsupported mask mode {mode!r}; expected an index or RGB PNG")


def colors_to_labels(
    rgb: np.ndarray, color_to_label: Mapping[tuple[int, int, int], int], path: PathLike = "<array>"
) -> np.ndarray:
    """Map an (H, W, 3) colour mask to (H, W) uint8 labels; an unlisted colour raises DataError."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(codes.ravel(), return_inverse=True)
    table = np.empty(len(uniq), dtype=np.uint8)
    for i, code in enumerate(uniq.tolist()):
        color = (code >> 16, (code >> 8) & 255, code & 255)
        if color not in color_to_label:
            count = int((inverse == i).sum())
            raise file_error(
                DataError,
                path,
                f"colour {list(color)} ({count} pixels) is not one of the "
                "class colours; add it to classes.yaml or set ignore_color",
            )
        table[i] = color_to_label[color]
    return table[inverse].reshape(codes.shape)


def read_mask(path: PathLike, color_to_label: Mapping[tuple[int, int, int], int] | None = None) -> np.ndarray:
    """Read a label mask as (H, W) uint8 class indices.

    Palette PNGs give their palette indices (not the colours), 'L' masks their grey values and
    16-bit masks are accepted when all values are < 256. RGB(A) masks need ``color_to_label``
    (colour -> class index, 255 for ignore); without it they raise DataError.
    """
    with _open_loaded(path) as img:
        labels = _mask_from_pil(img, path)
        if labels is not None:
            return labels
        if color_to_label is None:
            raise file_error(
                DataError,
                path,
                f"mask is a colour ({img.mode}) image; expected a "
                "single-channel PNG of class indices, or class colours in classes.yaml",
            )
        return colors_to_labels(np.asarray(img.convert("RGB")), color_to_label, path)


@contextlib.contextmanager
def unlimited_pixels() -> Iterator[None]:
    """Lift Pillow's decompression-bomb limit inside the block and restore it afterwards."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _tifffile(path: PathLike):
    """Import tifffile (optional "train" extra), or say how to install it."""
    try:
        import tifffile
    except ImportError:
        raise file_error(
            MissingDependencyError, path, "TIFF files need tifffile (pip install 'refineseg[train]')"
        ) from None
    return tifffile


def _read_tiff(path: PathLike) -> np.ndarray:
    tifffile = _tifffile(path)
    try:
        with tifffile.TiffFile(path) as tif:
            note_first_frame(path, len(tif.pages))
            page = tif.pages[0]
            planar = getattr(page, "planarconfig", None) == tifffile.PLANARCONFIG.SEPARATE
            if page.is_memmappable and page.dtype == np.uint8 and page.shape[-1:] == (3,) and not planar:
                return tifffile.memmap(path, page=0, mode="r")  # read lazily, tile by tile
            arr = page.asarray()
    except Exception as exc:  # tifffile raises many exception types for bad files
        raise file_error(DataError, path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from None
    if planar and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    return _array_to_rgb8(arr, path)


def read_large_image(path: PathLike) -> np.ndarray:
    """Read a possibly huge image (aerial tiles, scans) as (H, W, 3) uint8.

    TIFFs go through tifffile (first page; 16-bit scaled to 8-bit). Other formats use Pillow with
    the decompression-bomb check switched off for this call only.
    """
    if not os.path.isfile(path):
        raise file_error(DataError, path, "file not found")
    if os.fspath(path).lower().endswith(TIFF_SUFFIXES):
        return _read_tiff(path)
    with unlimited_pixels():
        return read_image(path)


def _palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    if len(palette) > 256:
        raise ValueError(f"a PNG palette holds at most 256 colours, got {len(palette)}")
    flat = [int(c) for color in palette for c in color[:3]]
    flat += [0] * (768 - len(flat))
    if len(palette) <= 255:
        flat[255 * 3 : 256 * 3] = IGNORE_COLOR
    return flat


def write_label_png(path: PathLike, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write (H, W) uint8 class indices as a palette-mode PNG (index 255 drawn in VOC's ignore colour).

    Readers get the indices back with :func:`read_mask`; image viewers show ``palette`` colours.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("labels must be in 0..255 to be written as a palette PNG")
        labels = labels.astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(labels))  # mode "L"
    img.putpalette(_palette_bytes(palette))  # turns it into mode "P" with the same indices
    write_pil(path, img, format="PNG")


def write_label_tiff(path: PathLike, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write (H, W) uint8 class indices as a palette TIFF, straight from the array (no copy).

    For label maps too large to copy comfortably (PNG writing through Pillow copies them once).
    """
    tifffile = _tifffile(path)
    colormap = np.asarray(_palette_bytes(palette), np.uint16).reshape(256, 3).T * 257  # 8 -> 16 bit
    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            labels,
            photometric="palette",
            colormap=colormap,
            compression="zlib",
            tile=(512, 512),
            bigtiff=labels.size > 2**31,
        )


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array; the format follows the file suffix."""
    write_pil(path, Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)))


def write_pil(path: PathLike, image: Image.Image, format: str | None = None) -> None:
    """Save a Pillow image atomically (temporary name, then rename); parent folders are created.

    ``format`` defaults to the one Pillow infers from the suffix of ``path``.
    """
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with atomic_write(path) as tmp:
        image.save(tmp, format=format)
