"""The side-by-side page of two evaluations of the same dataset: score deltas and the images that differ most."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refineseg.errors import DataError, file_error
from refineseg.report.figures import label_uri, photo_uri
from refineseg.report.html import (
    SUMMARY_KEYS,
    esc,
    fraction,
    page,
    pct_td,
    section,
    signed_pp,
    swatch,
    table,
    td,
    timestamp,
)
from refineseg.report.outputs import EvalOutputs, load_sample
from refineseg.report.pages import _class_legend, _img, _scores


def differing_images(
    a_rows: Sequence[dict[str, Any]], b_rows: Sequence[dict[str, Any]], top: int
) -> list[tuple[dict[str, Any], dict[str, Any], float]]:
    """The ``top`` images (matched by name) with the largest |mIoU of B - mIoU of A|, as (row A, row B, delta).

    Images without a defined mIoU in either are skipped; ties go to the lower index in A.
    """
    by_name = {r["name"]: r for r in b_rows}
    pairs = [
        (ra, by_name[ra["name"]], by_name[ra["name"]]["miou"] - ra["miou"])
        for ra in a_rows
        if ra["name"] in by_name and ra["miou"] is not None and by_name[ra["name"]]["miou"] is not None
    ]
    pairs.sort(key=lambda p: (-abs(p[2]), p[0]["index"]))
    return pairs[:top]


def _delta(a: Any, b: Any) -> float | None:
    fa, fb = fraction(a), fraction(b)
    return None if fa is None or fb is None else fb - fa


def _delta_td(a: Any, b: Any) -> str:
    d = _delta(a, b)
    return td(signed_pp(d), "" if d is None else f"{d:.6f}", num=True)


def _panel(
    a: EvalOutputs, b: EvalOutputs, dataset: Any, ra: dict, rb: dict, delta: float, rank: int, max_side: int
) -> str:
    pred_a, pred_b = a.prediction(ra["name"]), b.prediction(rb["name"])
    image, target = load_sample(dataset, ra["index"], pred_a)
    ignore = a.ignore_index
    figures = [
        _img(photo_uri(image, max_side), image.shape, "image", "image", False, max_side),
        _img(
            label_uri(target, a.colors, ignore, max_side), target.shape, "ground truth", "ground truth", True, max_side
        ),
    ]
    for tag, pred in (("A", pred_a), ("B", pred_b)):
        figures.append(
            _img(
                label_uri(pred, a.colors, ignore, max_side),
                pred.shape,
                f"prediction {tag}",
                f"prediction {tag}",
                True,
                max_side,
            )
        )
    return (
        f'<div class="panel" id="img-{ra["index"]}"><h3>{rank}. {esc(ra["name"])} '
        f"<small>(#{ra['index']}): mIoU B \u2212 A = {signed_pp(delta, 1)} pp</small></h3>"
        f'<p class="note">A: {_scores(ra)}<br>B: {_scores(rb)}</p><div class="row">{"".join(figures)}</div>'
        f"{_class_legend(a.names, a.colors, target, pred_a, pred_b, ignore_index=ignore, errors=False)}</div>"
    )


def compare_page(
    a: EvalOutputs, b: EvalOutputs, dataset: Any, dataset_note: str, *, top: int = 6, max_side: int = 512
) -> str:
    """Summary and per-class deltas (B - A, in percentage points) and the ``top`` most different images.

    ``dataset`` (None when its images cannot be read, ``dataset_note`` saying why) supplies the
    images and ground truth of the panels. Raises DataError when A and B name different classes.
    """
    if a.names != b.names:
        raise file_error(
            DataError,
            b.folder / "metrics.json",
            f"its {len(b.names)} classes differ from the {len(a.names)} of {a.folder / 'metrics.json'}",
        )
    sections = [
        (
            "summary",
            "Summary",
            section(
                "summary",
                "Summary",
                _summary_table(a.metrics, b.metrics),
                "Scores in % of the labelled pixels; differences B \u2212 A in percentage "
                "points (pp): green where B is better, red where it is worse.",
            ),
        ),
        (
            "classes",
            "Per class",
            section(
                "classes",
                f"Per class ({len(a.names)} classes)",
                _per_class_table(a, b),
                "Click a column header to sort (again to reverse).",
            ),
        ),
        ("images", "Images that differ most", _images_section(a, b, dataset, dataset_note, top, max_side)),
    ]
    return page(f"Comparison: {a.folder.name} (A) vs {b.folder.name} (B)", _meta(a, b), sections)


def _summary_table(ma: dict[str, Any], mb: dict[str, Any]) -> str:
    """The summary scores of both runs (metrics.json dicts ``ma``, ``mb``) and their differences."""
    rows = [
        [td(esc(label)), pct_td(ma.get(key)), pct_td(mb.get(key)), _delta_td(ma.get(key), mb.get(key))]
        for key, label in SUMMARY_KEYS
        if key in ma or key in mb
    ]
    return table(
        [("Score", False), ("A %", True), ("B %", True), ("B \u2212 A (pp)", True)],
        rows,
        table_id="summary",
        sortable=False,
    )


def _per_class_table(a: EvalOutputs, b: EvalOutputs) -> str:
    """One sortable row per class: IoU and Boundary IoU of A and B, and their differences."""
    class_rows = []
    for i, (ca, cb) in enumerate(zip(a.metrics["per_class"], b.metrics["per_class"])):
        class_rows.append(
            [
                td(str(i), i, num=True),
                td(swatch(a.colors[i]) + esc(a.names[i]), a.names[i]),
                pct_td(ca.get("IoU")),
                pct_td(cb.get("IoU")),
                _delta_td(ca.get("IoU"), cb.get("IoU")),
                pct_td(ca.get("boundary_iou")),
                pct_td(cb.get("boundary_iou")),
                _delta_td(ca.get("boundary_iou"), cb.get("boundary_iou")),
            ]
        )
    return table(
        [
            ("#", True),
            ("Class", False),
            ("IoU A %", True),
            ("IoU B %", True),
            ("\u0394 IoU (pp)", True),
            ("Boundary IoU A %", True),
            ("Boundary IoU B %", True),
            ("\u0394 Boundary IoU (pp)", True),
        ],
        class_rows,
        table_id="per-class",
    )


def _images_section(a: EvalOutputs, b: EvalOutputs, dataset: Any, dataset_note: str, top: int, max_side: int) -> str:
    """The section of the ``top`` most differing images: a linked table, then one panel each.

    Without ``dataset`` it only says why the images are not shown.
    """
    pairs = differing_images(a.per_image, b.per_image, top)
    if dataset is None:
        return section("images", "Images that differ most", "", f"Images not shown: {esc(dataset_note)}.")
    panels = "".join(_panel(a, b, dataset, ra, rb, d, i + 1, max_side) for i, (ra, rb, d) in enumerate(pairs))
    note = (
        f"The {len(pairs)} images (matched by name) whose per-image mIoU differs most between A and B; "
        "green: B is better, red: B is worse."
    )
    image_rows = [
        [
            td(str(ra["index"]), ra["index"], num=True),
            td(f'<a href="#img-{ra["index"]}">{esc(ra["name"])}</a>', ra["name"]),
            pct_td(ra["miou"]),
            pct_td(rb["miou"]),
            _delta_td(ra["miou"], rb["miou"]),
        ]
        for ra, rb, _ in pairs
    ]
    listing = table(
        [("#", True), ("Image", False), ("mIoU A %", True), ("mIoU B %", True), ("\u0394 mIoU (pp)", True)],
        image_rows,
        table_id="differing",
    )
    return section("images", "Images that differ most", listing + panels, note)


def _meta(a: EvalOutputs, b: EvalOutputs) -> list[tuple[str, str]]:
    """The page header's facts: both checkpoints, the dataset, both inference modes, the time."""
    ma, mb = a.metrics, b.metrics
    return [
        (f"A ({a.folder})", esc(ma.get("checkpoint", "?"))),
        (f"B ({b.folder})", esc(mb.get("checkpoint", "?"))),
        ("Dataset", f"{esc(ma.get('dataset', '?'))} / {esc(ma.get('split', '?'))}, {ma.get('num_images', '?')} images"),
        ("Inference", f"A: {esc(ma.get('mode', '?'))}, B: {esc(mb.get('mode', '?'))}"),
        ("Generated", timestamp()),
    ]
