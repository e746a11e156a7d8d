"""Pictures for the report pages: images as data URIs (Pillow) and line charts as inline SVG.

Nothing here needs matplotlib: photos become JPEG and label maps palette PNG ``data:`` URIs,
downscaled so the longer side is at most ``max_side`` pixels; charts are SVG markup written
directly (HTML5 inline SVG, so no namespace URL).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from refineseg.utils.palette import IGNORE_COLOR

Color = Sequence[int]
#: Error maps: wrong pixels in this red over a faded grey copy of the photo.
WRONG_COLOR = (230, 20, 40)
_GREY_LEVELS = 32  # grey shades of the faded photo in the error map's palette


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) scaled down (never up) so that the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def data_uri(image: Image.Image, format: str = "PNG") -> str:
    """``data:image/png;base64,...`` (or JPEG) of a Pillow image; deterministic bytes."""
    buffer = io.BytesIO()
    if format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=88)
    else:
        image.save(buffer, format="PNG", compress_level=9)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_uri(image: np.ndarray, max_side: int) -> str:
    """An (H, W, 3) uint8 photo as a JPEG data URI (photos compress ~10x better than PNG)."""
    h, w = fit_size(*image.shape[:2], max_side)
    picture = Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8))
    if (h, w) != image.shape[:2]:
        picture = picture.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return data_uri(picture, "JPEG")


def _palette_image(indices: np.ndarray, colors: Sequence[Color]) -> Image.Image:
    """An (H, W) uint8 index array as a palette ("P") image with ``colors`` (at most 256)."""
    flat = [int(c) for color in colors for c in color[:3]]
    picture = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8))  # mode "L"
    picture.putpalette(flat + [0] * (768 - len(flat)))
    return picture


def label_colors(palette: Sequence[Color], ignore_index: int = 255) -> list[Color]:
    """256 palette entries: the class colours, ``IGNORE_COLOR`` at ``ignore_index``, black elsewhere."""
    colors: list[Color] = [tuple(c[:3]) for c in palette[:256]] + [(0, 0, 0)] * (256 - min(len(palette), 256))
    if 0 <= ignore_index < 256:
        colors[ignore_index] = IGNORE_COLOR
    return colors


def label_uri(labels: np.ndarray, palette: Sequence[Color], ignore_index: int = 255, max_side: int = 512) -> str:
    """An (H, W) class-index map as a palette PNG data URI in the dataset's colours (nearest downscaling)."""
    h, w = fit_size(*labels.shape[:2], max_side)
    picture = _palette_image(labels, label_colors(palette, ignore_index))
    if (h, w) != labels.shape[:2]:
        picture = picture.resize((w, h), Image.Resampling.NEAREST)
    return data_uri(picture)


def error_uri(
    image: np.ndarray, target: np.ndarray, prediction: np.ndarray, ignore_index: int = 255, max_side: int = 512
) -> str:
    """Where the prediction is wrong: red over a faded grey copy of the photo, ignored pixels in ``IGNORE_COLOR``.

    ``image`` (H, W, 3), ``target`` and ``prediction`` (H, W). When downscaling, an output pixel is
    red if (nearly) any pixel it covers is wrong, so thin errors stay visible.
    """
    h, w = fit_size(*target.shape[:2], max_side)
    ignored = target == ignore_index
    wrong = (prediction != target) & ~ignored
    grey = Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8)).convert("L")
    wrong_map = Image.fromarray(wrong.astype(np.uint8) * 255)
    ignored_map = Image.fromarray(ignored.astype(np.uint8) * 255)
    if (h, w) != target.shape[:2]:
        grey = grey.resize((w, h), Image.Resampling.BOX)
        wrong_map = wrong_map.resize((w, h), Image.Resampling.BOX)
        ignored_map = ignored_map.resize((w, h), Image.Resampling.BOX)
    indices = (np.asarray(grey, np.uint16) * _GREY_LEVELS // 256).astype(np.uint8)
    indices[np.asarray(ignored_map) >= 128] = _GREY_LEVELS + 1
    indices[np.asarray(wrong_map) > 0] = _GREY_LEVELS
    faded = [(v, v, v) for v in (round(80 + 140 * i / (_GREY_LEVELS - 1)) for i in range(_GREY_LEVELS))]
    return data_uri(_palette_image(indices, faded + [WRONG_COLOR, IGNORE_COLOR]))


def heatmap_uri(fractions: np.ndarray, cell: int) -> str:
    """A (C, C) matrix of values in [0, 1] as a white-to-blue PNG, ``cell`` pixels per entry."""
    value = np.clip(np.nan_to_num(fractions), 0.0, 1.0)[..., None]
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = (white + (blue - white) * value**0.5).round().astype(np.uint8)
    rgb = rgb.repeat(cell, axis=0).repeat(cell, axis=1)
    return data_uri(Image.fromarray(rgb))


@dataclass
class Series:
    """One line of a chart: points (xs[i], ys[i]) in data units, drawn in ``color`` (CSS)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        lo, hi = lo - (abs(lo) * 0.05 or 0.5), hi + (abs(hi) * 0.05 or 0.5)
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, value = [], first
    while value < hi + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def format_tick(value: float, step: float) -> str:
    """Tick label with as many decimals as the tick step needs; scientific for tiny or huge values."""
    if value == 0:
        return "0"
    if step < 1e-3 or abs(value) >= 1e6:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 560,
    height: int = 300,
) -> str:
    """A ``<figure>`` with an inline SVG line chart: axes, ticks, grid, labels, legend, point tooltips.

    ``x_range`` / ``y_range`` set the axes to cover at least that range (e.g. (0, last step) for
    curves of one run side by side); by default they cover the data.
    Series with no finite points are dropped; with none left, a note says there is no data yet.
    """
    drawn = _finite_points(series)
    caption = f"<figcaption>{html.escape(title)}</figcaption>"
    if not drawn:
        return f'<figure class="chart">{caption}<p class="note">No data yet.</p></figure>'
    frame = _ChartFrame.around(drawn, x_range, y_range, width, height)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        *_axes_svg(frame, x_label, y_label),
        *_series_svg(frame, drawn, x_label),
        "</svg>",
    ]
    return f'<figure class="chart">{caption}{"".join(parts)}</figure>'


Points = list[tuple[float, float]]


def _finite_points(series: Sequence[Series]) -> list[tuple[Series, Points]]:
    """Each series with its finite (x, y) points as floats; series without any are left out."""
    drawn = []
    for s in series:
        pts = [
            (float(x), float(y))
            for x, y in zip(s.xs, s.ys)
            if y is not None and math.isfinite(float(y)) and math.isfinite(float(x))
        ]
        if pts:
            drawn.append((s, pts))
    return drawn


@dataclass
class _ChartFrame:
    """Where a chart's plot area lies in the SVG and which data ranges its axes cover (the outer ticks)."""

    width: int
    height: int
    x_ticks: list[float]
    y_ticks: list[float]
    left: int = 66  # margins: tick labels on the left, the legend on top, the x label below
    right: int = 14
    top: int = 30
    bottom: int = 46

    @classmethod
    def around(
        cls,
        drawn: list[tuple[Series, Points]],
        x_range: tuple[float, float] | None,
        y_range: tuple[float, float] | None,
        width: int,
        height: int,
    ) -> _ChartFrame:
        """The frame whose ticks cover every drawn point and the requested ranges."""
        xs = [x for _, pts in drawn for x, _ in pts]
        ys = [y for _, pts in drawn for _, y in pts]
        x_lo, x_hi = x_range or (math.inf, -math.inf)
        y_lo, y_hi = y_range or (math.inf, -math.inf)
        x_ticks = nice_ticks(min(x_lo, *xs), max(x_hi, *xs))
        y_ticks = nice_ticks(min(y_lo, *ys), max(y_hi, *ys))
        return cls(width, height, x_ticks, y_ticks)

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom

    @property
    def x_step(self) -> float:
        return self.x_ticks[1] - self.x_ticks[0] if len(self.x_ticks) > 1 else 1.0

    @property
    def y_step(self) -> float:
        return self.y_ticks[1] - self.y_ticks[0] if len(self.y_ticks) > 1 else 1.0

    def px(self, x: float) -> float:
        """SVG x of data x."""
        x0, x1 = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (x - x0) / ((x1 - x0) or 1.0) * self.plot_w

    def py(self, y: float) -> float:
        """SVG y of data y (SVG's y grows downwards)."""
        y0, y1 = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.plot_h - (y - y0) / ((y1 - y0) or 1.0) * self.plot_h


def _axes_svg(frame: _ChartFrame, x_label: str, y_label: str) -> list[str]:
    """SVG of the horizontal grid lines, both axes with their ticks and tick labels, and the axis labels."""
    left, top, plot_w, plot_h, px, py = frame.left, frame.top, frame.plot_w, frame.plot_h, frame.px, frame.py
    parts = []
    for t in frame.y_ticks:
        parts.append(
            f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{format_tick(t, frame.y_step)}</text>'
        )
    for t in frame.x_ticks:
        parts.append(
            f'<line class="axis" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + plot_h}" '
            f'y2="{top + plot_h + 4}"/><text x="{px(t):.1f}" y="{top + plot_h + 17}" '
            f'text-anchor="middle">{format_tick(t, frame.x_step)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>'
    )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{frame.height - 6}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
    )
    return parts


def _series_svg(frame: _ChartFrame, drawn: list[tuple[Series, Points]], x_label: str) -> list[str]:
    """SVG of each series: its polyline, point markers with tooltips (up to 60 points), and a legend entry
    when there are several series."""
    px, py = frame.px, frame.py
    parts = []
    legend_x = frame.left
    for s, pts in drawn:
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{s.color}" stroke-width="1.8"/>')
        if len(pts) <= 60:
            for x, y in pts:
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{s.color}">'
                    f"<title>{html.escape(s.label)}: {format_tick(y, frame.y_step / 100)} at "
                    f"{html.escape(x_label)} {x:g}</title></circle>"
                )
        if len(drawn) > 1:
            parts.append(
                f'<rect x="{legend_x}" y="9" width="12" height="12" fill="{s.color}"/>'
                f'<text x="{legend_x + 16}" y="19">{html.escape(s.label)}</text>'
            )
            legend_x += 30 + 7 * len(s.label)
    return parts
