"""HTML building blocks shared by the report pages: the page shell, tables, cards, legends, confusion matrix.

Every function returns a string of HTML; every piece of text from outside (class names, paths,
file names) goes through :func:`esc`. Scores arrive as fractions and are shown as percentages.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from refineseg.report.assets import CSS, JS
from refineseg.report.figures import Color, heatmap_uri

DASH = "\u2013"  # shown for undefined scores
#: Summary metrics in display order: (key in metrics.json, label).
SUMMARY_KEYS = [
    ("mIoU", "mIoU"),
    ("mBoundaryIoU", "Boundary mIoU"),
    ("aAcc", "Pixel accuracy"),
    ("mAcc", "Mean class accuracy"),
    ("fwIoU", "Frequency-weighted IoU"),
    ("mFscore", "Mean F-score"),
    ("mDice", "Mean Dice"),
]
HTML_CONFUSION_MAX = 30  # classes up to which the confusion matrix is an HTML table; above, a picture


def esc(value: Any) -> str:
    """Text -> HTML-safe text (quotes too, so it can go into attributes)."""
    return html.escape(str(value), quote=True)


def fraction(value: Any) -> float | None:
    """A finite float, or None for missing / null / NaN values."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pct(value: Any, digits: int = 2) -> str:
    """0.1234 -> '12.34' (percent, no sign); undefined -> a dash."""
    number = fraction(value)
    return DASH if number is None else f"{100 * number:.{digits}f}"


def signed_pp(delta: float | None, digits: int = 2) -> str:
    """A difference of two fractions in percentage points, coloured: green when positive, red when negative."""
    if delta is None:
        return DASH
    text = f"{100 * delta:+.{digits}f}"
    if float(text) == 0:
        return text.replace("-", "+").replace("+", "\u00b1", 1)
    return f'<span class="{"pos" if delta > 0 else "neg"}">{text}</span>'


def timestamp() -> str:
    """``<time>`` of now (local time, to the minute): the one part of a page that changes on a rebuild."""
    now = datetime.now().astimezone()
    return f'<time datetime="{now.isoformat(timespec="seconds")}">{now.strftime("%Y-%m-%d %H:%M %Z")}</time>'


def swatch(color: Color) -> str:
    r, g, b = (int(c) for c in color[:3])
    return f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'


def legend(entries: Sequence[tuple[Color, str]]) -> str:
    """Colour swatches with their names, in one wrapping line."""
    return '<div class="legend">' + "".join(f"<span>{swatch(c)}{esc(name)}</span>" for c, name in entries) + "</div>"


def td(content: str, sort: Any = None, num: bool = False, style: str = "", title: str = "", cls: str = "") -> str:
    """A table cell of ready HTML ``content``; ``sort`` becomes its ``data-sort`` key (None: no key)."""
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attrs = f' class="{classes}"' if classes else ""
    if sort is not None:
        attrs += f' data-sort="{esc(sort)}"'
    if style:
        attrs += f' style="{style}"'
    if title:
        attrs += f' title="{esc(title)}"'
    return f"<td{attrs}>{content}</td>"


def pct_td(value: Any, bar: bool = False) -> str:
    """A percentage cell sorting by the exact value (undefined: empty key, sorted last); ``bar``: a bar behind."""
    number = fraction(value)
    style = f"background-size: {100 * number:.1f}% 100%" if bar and number is not None else ""
    return td(pct(value), "" if number is None else f"{number:.6f}", num=True, style=style, cls="bar" if style else "")


def table(
    head: Sequence[tuple[str, bool]],
    rows: Sequence[Sequence[str]],
    *,
    table_id: str = "",
    sortable: bool = True,
    cls: str = "",
) -> str:
    """A table from ``(header text, numeric?)`` pairs and rows of :func:`td` cells."""
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (f' class="{classes}"' if classes else "")
    header = "".join(f'<th class="num">{esc(text)}</th>' if num else f"<th>{esc(text)}</th>" for text, num in head)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table{attrs}><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>'


def cards(items: Sequence[tuple[str, str, str]]) -> str:
    """Big-number cards: (label, value, unit)."""
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{esc(value)}'
            f"{f' <small>{esc(unit)}</small>' if unit else ''}</div></div>"
            for label, value, unit in items
        )
        + "</div>"
    )


def summary_cards(metrics: dict[str, Any]) -> str:
    """Cards for the summary scores present in ``metrics`` (fractions, shown in %)."""
    return cards([(label, pct(metrics.get(key)), "%") for key, label in SUMMARY_KEYS if key in metrics])


def section(section_id: str, title: str, body: str, note: str = "") -> str:
    paragraph = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{paragraph}{body}</section>'


def page(title: str, meta: Sequence[tuple[str, str]], sections: Sequence[tuple[str, str, str]]) -> str:
    """A complete self-contained HTML document.

    ``meta``: (label, HTML value) shown under the title; ``sections``: (id, nav title, section HTML),
    linked from a navigation bar.
    """
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in meta)
    nav = "".join(f'<a href="#{esc(i)}">{esc(name)}</a>' for i, name, _ in sections)
    body = "".join(s for _, _, s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head>\n'
        f"<body><header><h1>{esc(title)}</h1><dl>{facts}</dl></header><nav>{nav}</nav>\n<main>{body}</main>\n"
        f"<footer>Written by refineseg. Scores in % of pixels (IoU: intersection over union); "
        f"widths in pixels (px) of the evaluated images.</footer><script>{JS}</script></body></html>\n"
    )


def per_class_table(per_class: Sequence[dict[str, Any]], colors: Sequence[Color], table_id: str = "per-class") -> str:
    """Sortable table, one row per class: id, class (swatch), IoU, boundary IoU, accuracy, F-score, pixel share.

    Columns whose key no class has (e.g. boundary IoU in a training validation) are left out.
    """
    columns = [
        (key, label)
        for key, label in (
            ("IoU", "IoU %"),
            ("boundary_iou", "Boundary IoU %"),
            ("Acc", "Accuracy %"),
            ("fscore", "F-score %"),
            ("pixel_share", "Pixel share %"),
        )
        if any(key in c for c in per_class)
    ]
    head = [("#", True), ("Class", False)] + [(label, True) for _, label in columns]
    rows = []
    for i, entry in enumerate(per_class):
        color = colors[i] if i < len(colors) else (0, 0, 0)
        rows.append(
            [td(str(i), i, num=True), td(swatch(color) + esc(entry.get("name", i)), entry.get("name", i))]
            + [pct_td(entry.get(key), bar=key in ("IoU", "boundary_iou")) for key, _ in columns]
        )
    return table(head, rows, table_id=table_id)


def confusion_matrix(matrix: np.ndarray, names: Sequence[str], colors: Sequence[Color], top: int = 10) -> str:
    """The (C, C) count matrix (rows = ground truth), row-normalized in %, plus the most confused pairs.

    Up to :data:`HTML_CONFUSION_MAX` classes an HTML heat map (counts in the cells' tooltips),
    above that a picture of it.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=1)
    share = matrix / np.maximum(totals, 1)[:, None]
    if len(matrix) <= HTML_CONFUSION_MAX:
        picture = _confusion_table(matrix, share, totals, names, colors)
    else:
        picture = _confusion_picture(share)
    return picture + _most_confused(matrix, share, names, colors, top)


def _confusion_table(
    matrix: np.ndarray, share: np.ndarray, totals: np.ndarray, names: Sequence[str], colors: Sequence[Color]
) -> str:
    """The matrix as an HTML table: cells shaded by their share of the row, counts in the tooltips, row totals."""
    c = len(matrix)
    columns = "".join(f'<th class="col">{swatch(colors[j])}{esc(names[j])}</th>' for j in range(c))
    head = f'<tr><th>Ground truth \u2193 / predicted \u2192</th>{columns}<th class="num">Pixels</th></tr>'
    rows = []
    for i in range(c):
        cells = []
        for j in range(c):
            value = share[i, j]
            blue = f"rgba(8, 48, 107, {value**0.5:.3f})"
            color = "#fff" if value > 0.3 else "#1d2330"
            text = f"{100 * value:.1f}" if matrix[i, j] else ""
            tip = (
                f"ground truth {names[i]}, predicted {names[j]}: {matrix[i, j]:,} px ({100 * value:.2f}% of {names[i]})"
            )
            cells.append(td(text, style=f"background: {blue}; color: {color}", title=tip, cls="diag" if i == j else ""))
        rows.append(
            f'<tr><th>{swatch(colors[i])}{esc(names[i])}</th>{"".join(cells)}<td class="num">{totals[i]:,}</td></tr>'
        )
    return f'<div class="scroll"><table class="confusion">{head}{"".join(rows)}</table></div>'


def _confusion_picture(share: np.ndarray) -> str:
    """The row-normalized matrix as a heat-map image, for more classes than an HTML table can show."""
    c = len(share)
    cell = max(2, min(16, 640 // c))
    return (
        f'<img class="heatmap" src="{heatmap_uri(share, cell)}" width="{c * cell}" height="{c * cell}" '
        f'alt="confusion matrix, {c} classes, rows = ground truth (top to bottom), columns = '
        f'prediction (left to right), darker = larger share of the row">'
    )


def _most_confused(
    matrix: np.ndarray, share: np.ndarray, names: Sequence[str], colors: Sequence[Color], top: int
) -> str:
    """A table of the ``top`` largest off-diagonal shares (ground truth predicted as another class), or ""."""
    c = len(matrix)
    off = share.copy()
    np.fill_diagonal(off, 0)
    order = [int(k) for k in np.argsort(-off, axis=None, kind="stable")[:top] if off.flat[int(k)] > 0]
    pairs = [
        [
            td(swatch(colors[k // c]) + esc(names[k // c])),
            td(swatch(colors[k % c]) + esc(names[k % c])),
            pct_td(off.flat[k]),
            td(f"{matrix.flat[k]:,}", int(matrix.flat[k]), num=True),
        ]
        for k in order
    ]
    if not pairs:
        return ""
    head = [("Ground truth", False), ("Predicted as", False), ("% of the ground truth class", True), ("Pixels", True)]
    return "<h3>Most confused pairs</h3>" + table(head, pairs, table_id="confused")
