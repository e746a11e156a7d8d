"""The three report pages: an evaluation, a training run, and two evaluations side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refineseg.report.figures import WRONG_COLOR, Color, Series, error_uri, fit_size, label_uri, line_chart, photo_uri
from refineseg.report.html import (
    cards,
    confusion_matrix,
    esc,
    fraction,
    legend,
    page,
    pct,
    pct_td,
    per_class_table,
    section,
    summary_cards,
    table,
    td,
    timestamp,
)
from refineseg.report.outputs import EvalOutputs, class_colors, class_names, load_sample
from refineseg.utils.palette import IGNORE_COLOR

LINE_COLORS = ["#2f5fb3", "#d9711c", "#2e9e48", "#a23cb8"]


def _img(uri: str, shape: tuple[int, ...], alt: str, caption: str, labels: bool, max_side: int) -> str:
    height, width = fit_size(shape[0], shape[1], max_side)
    cls = ' class="labels"' if labels else ""
    return (
        f'<figure><img{cls} src="{uri}" width="{width}" height="{height}" alt="{esc(alt)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _class_legend(
    names: Sequence[str], colors: Sequence[Color], *maps: np.ndarray, ignore_index: int, errors: bool = True
) -> str:
    """Legend of the classes present in any of ``maps``, plus the error-map colours."""
    present = sorted(set().union(*(np.unique(m).tolist() for m in maps)))
    entries = [(colors[c], names[c]) for c in present if c < len(names)]
    if any(ignore_index in np.unique(m) for m in maps):
        entries.append((IGNORE_COLOR, "ignored (not scored)"))
    if errors:
        entries.append((WRONG_COLOR, "wrong pixel (error map)"))
    return legend(entries)


def _scores(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    return (
        f"mIoU {pct(row.get('miou'), 1)}%, pixel accuracy {pct(row.get('pixel_accuracy'), 1)}%, "
        f"boundary IoU {pct(row.get('boundary_iou'), 1)}%"
    )


def eval_panel(run: EvalOutputs, dataset: Any, row: dict[str, Any], heading: str, max_side: int) -> str:
    """One image: photo | ground truth | prediction | error map, with its scores and a class legend."""
    prediction = run.prediction(row["name"])
    image, target = load_sample(dataset, row["index"], prediction)
    ignore = run.ignore_index
    figures = [
        _img(photo_uri(image, max_side), image.shape, "image", "image", False, max_side),
        _img(
            label_uri(target, run.colors, ignore, max_side),
            target.shape,
            "ground truth",
            "ground truth",
            True,
            max_side,
        ),
        _img(
            label_uri(prediction, run.colors, ignore, max_side),
            prediction.shape,
            "prediction",
            "prediction",
            True,
            max_side,
        ),
        _img(
            error_uri(image, target, prediction, ignore, max_side),
            target.shape,
            "error map",
            "errors (red = wrong)",
            False,
            max_side,
        ),
    ]
    return (
        f'<div class="panel" id="img-{row["index"]}"><h3>{esc(heading)}: {esc(row["name"])} '
        f"<small>(#{row['index']}, {target.shape[1]}\u00d7{target.shape[0]} px)</small></h3>"
        f'<p class="note">{_scores(row)}</p><div class="row">{"".join(figures)}</div>'
        f"{_class_legend(run.names, run.colors, target, prediction, ignore_index=ignore)}</div>"
    )


def pick_worst_best(rows: Sequence[dict[str, Any]], worst: int, best: int) -> tuple[list[dict], list[dict]]:
    """The ``worst`` lowest and ``best`` highest per-image mIoU rows (ties: lower index first); no repeats."""
    scored = sorted((r for r in rows if r.get("miou") is not None), key=lambda r: (r["miou"], r["index"]))
    low = scored[:worst]
    high = [r for r in sorted(scored, key=lambda r: (-r["miou"], r["index"])) if r not in low][:best]
    return low, high


def trimap_chart(trimap: dict[str, Any] | None) -> str:
    if not trimap or not trimap.get("widths"):
        return ""
    ys = [None if fraction(a) is None else 100 * float(a) for a in trimap.get("accuracy", [])]
    return line_chart(
        [Series("pixel accuracy", trimap["widths"], ys, LINE_COLORS[0])],
        title="Pixel accuracy near object boundaries (trimap)",
        x_label="band width around boundaries (px)",
        y_label="pixel accuracy in the band (%)",
        width=620,
    )


def _meta(metrics: dict[str, Any], extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    config = metrics.get("config") or {}
    scales = config.get("scales") if metrics.get("mode") == "multiscale" else None
    mode = esc(metrics.get("mode", "?")) + (f" (scales {esc(', '.join(f'{s:g}' for s in scales))})" if scales else "")
    return [
        ("Checkpoint", esc(metrics.get("checkpoint", "?"))),
        (
            "Dataset",
            f"{esc(metrics.get('dataset', '?'))} / {esc(metrics.get('split', '?'))}, "
            f"{metrics.get('num_images', '?')} images",
        ),
        ("Inference", mode),
        *extra,
        ("Generated", timestamp()),
    ]


def _validation_sections(
    metrics: dict[str, Any], names: list[str], colors: list[Color], prefix: str = ""
) -> list[tuple[str, str, str]]:
    """Summary, per-class table, confusion matrix and trimap of one evaluation's metrics."""
    ratio = fraction(metrics.get("boundary_ratio"))
    note = (
        f"Scores in % over all labelled pixels. Boundary IoU: IoU of the bands within {100 * ratio:g}% "
        "of the image diagonal around the class boundaries."
        if ratio
        else "Scores in % over all labelled pixels."
    )
    out = [
        (f"{prefix}summary", "Summary", section(f"{prefix}summary", "Summary", summary_cards(metrics), note)),
        (
            f"{prefix}classes",
            "Per class",
            section(
                f"{prefix}classes",
                f"Per class ({len(metrics.get('per_class', []))} classes)",
                per_class_table(metrics.get("per_class", []), colors),
                "Click a column header to sort (again to reverse). Pixel share: the class's share of the labelled "
                "ground-truth pixels. \u2013: undefined (class absent from ground truth and prediction).",
            ),
        ),
    ]
    matrix = metrics.get("confusion_matrix")
    if matrix:
        out.append(
            (
                f"{prefix}confusion",
                "Confusion matrix",
                section(
                    f"{prefix}confusion",
                    "Confusion matrix",
                    confusion_matrix(np.asarray(matrix), names, colors),
                    "Row-normalized: each row (ground-truth class) shows in % where its pixels went; hover a cell for "
                    "the pixel count.",
                ),
            )
        )
    chart = trimap_chart(metrics.get("trimap"))
    if chart:
        out.append(
            (
                f"{prefix}trimap",
                "Trimap",
                section(
                    f"{prefix}trimap",
                    "Trimap curve",
                    chart,
                    "Pixel accuracy counted only within a band of the given width around the ground-truth boundaries: "
                    "how well the edges are segmented.",
                ),
            )
        )
    return out


def eval_page(
    run: EvalOutputs, dataset: Any, dataset_note: str, *, worst: int = 6, best: int = 3, max_side: int = 512
) -> str:
    """The evaluate report: summary, per-class table, confusion matrix, trimap, worst/best images, per-image table."""
    metrics = run.metrics
    sections = _validation_sections(metrics, run.names, run.colors)
    low, high = pick_worst_best(run.per_image, worst, best)
    shown = {r["index"] for r in low + high}
    if dataset is None:
        body, note = "", f"Images not shown: {esc(dataset_note)}."
    else:
        body = "".join(eval_panel(run, dataset, r, f"Worst {i + 1}", max_side) for i, r in enumerate(low))
        body += "".join(eval_panel(run, dataset, r, f"Best {i + 1}", max_side) for i, r in enumerate(high))
        note = (
            f"The {len(low)} images with the lowest and the {len(high)} with the highest mIoU (per image: over "
            "the classes in its ground truth or prediction). Error map: wrong pixels in red over the faded image."
        )
    sections.append(("images", "Worst and best images", section("images", "Worst and best images", body, note)))
    rows = [
        [
            td(str(r["index"]), r["index"], num=True),
            td(
                f'<a href="#img-{r["index"]}">{esc(r["name"])}</a>'
                if r["index"] in shown and dataset is not None
                else esc(r["name"]),
                r["name"],
            ),
            pct_td(r["pixel_accuracy"]),
            pct_td(r["miou"], bar=True),
            pct_td(r["boundary_iou"]),
        ]
        for r in run.per_image
    ]
    images_table = table(
        [("#", True), ("Image", False), ("Pixel accuracy %", True), ("mIoU %", True), ("Boundary IoU %", True)],
        rows,
        table_id="per-image",
    )
    sections.append(
        (
            "per-image",
            "Per image",
            section(
                "per-image",
                f"Per image ({len(run.per_image)} images)",
                images_table,
                "Linked names have a picture above. Click a column header to sort.",
            ),
        )
    )
    model = "/".join(Path(str(metrics.get("checkpoint", "model"))).parts[-2:])
    title = f"Evaluation of {model} on {metrics.get('dataset', '?')} {metrics.get('split', '')}".rstrip()
    return page(title, _meta(metrics), sections)


def _curve(records: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    points = [
        (r["iter"], scale * float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "iter" in r
    ]
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def training_page(
    folder: Path, records: list[dict[str, Any]], config: dict[str, Any], validation: dict[str, Any] | None
) -> str:
    """The training run report: loss, LR and validation curves, and the last validation's details.

    ``records``, ``config`` and ``validation`` are what :func:`~refineseg.report.outputs.read_training`
    reads: the ``metrics.jsonl`` records, ``config.yaml`` and ``last_validation.json`` (None before the first).
    """
    steps = max((r["iter"] for r in records if "iter" in r), default=0)
    sections = [
        ("progress", "Progress", section("progress", "Progress", cards(_progress_cards(records, config, steps)))),
        (
            "curves",
            "Curves",
            section(
                "curves",
                "Training curves",
                f'<div class="charts">{"".join(_training_charts(records, steps))}</div>',
                "Hover a point for its value.",
            ),
        ),
    ]
    if validation is not None:
        sections += _last_validation_sections(validation)
    meta = [
        ("Run", esc(folder)),
        ("Model", esc(config.get("model", "?"))),
        (
            "Dataset",
            f"{esc(config.get('dataset', '?'))} (train: {esc(config.get('train_split', '?'))}, "
            f"validation: {esc(config.get('val_split', '?'))})",
        ),
        ("Generated", timestamp()),
    ]
    return page(f"Training run: {folder.name}", meta, sections)


def _progress_cards(records: list[dict[str, Any]], config: dict[str, Any], steps: int) -> list[tuple[str, str, str]]:
    """The progress cards: step reached, last and best validation mIoU, and the last training loss."""
    val = [r for r in records if isinstance(r.get("mIoU"), (int, float))]
    best = max(val, key=lambda r: r["mIoU"], default=None)
    items = [("Step", f"{steps:,}", f"of {config['iters']:,}" if isinstance(config.get("iters"), int) else "")]
    if val:
        items.append((f"Last val mIoU (step {val[-1]['iter']:,})", pct(val[-1]["mIoU"]), "%"))
        items.append((f"Best val mIoU (step {best['iter']:,})", pct(best["mIoU"]), "%"))
    _, loss_y = _curve(records, "loss")
    if loss_y:
        items.append(("Training loss (last)", f"{loss_y[-1]:.4f}", ""))
    return items


def _training_charts(records: list[dict[str, Any]], steps: int) -> list[str]:
    """The loss, learning-rate and validation-score charts, their x axes all spanning steps 0 to ``steps``."""
    axis = (0, steps)
    scores = [("mIoU", "mIoU"), ("aAcc", "pixel accuracy"), ("mAcc", "mean class accuracy")]
    return [
        line_chart(
            [Series("loss", *_curve(records, "loss"), LINE_COLORS[0])],
            title="Training loss",
            x_label="iteration",
            y_label="loss (mean since the previous point)",
            x_range=axis,
        ),
        line_chart(
            [Series("learning rate", *_curve(records, "lr"), LINE_COLORS[1])],
            title="Learning rate (backbone)",
            x_label="iteration",
            y_label="learning rate",
            x_range=axis,
        ),
        line_chart(
            [Series(label, *_curve(records, key, 100.0), LINE_COLORS[i]) for i, (key, label) in enumerate(scores)],
            title="Validation scores",
            x_label="iteration",
            y_label="score (%)",
            x_range=axis,
        ),
    ]


def _last_validation_sections(validation: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The evaluation page's sections for the last validation, their headings naming its step."""
    sub = _validation_sections(validation, class_names(validation), class_colors(validation), prefix="val-")
    step = validation.get("iter")
    heading = f"<h2>Last validation (step {step:,}): " if isinstance(step, int) else "<h2>Last validation: "
    return [(i, "Last validation" if i.endswith("summary") else t, s.replace("<h2>", heading, 1)) for i, t, s in sub]
