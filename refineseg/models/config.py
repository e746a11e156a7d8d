"""The model configuration: everything needed to rebuild a model and use it on images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from refineseg.utils.palette import color_palette
from refineseg.version import __version__

VERSION_KEY = "refineseg_version"  # in config.json: the version that wrote it

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Architecture, options, classes and input normalization of a segmentation model.

    Saved as ``config.json`` next to the weights by ``save_pretrained``.
    """

    name: str
    num_classes: int
    output_stride: int = 32
    freeze_bn: bool = False
    dropout: float | None = None  # None: the family's published default
    class_names: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if not self.palette:
            self.palette = color_palette(self.num_classes)
        self.palette = [tuple(int(v) for v in c) for c in self.palette]
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.class_names) != self.num_classes or len(self.palette) != self.num_classes:
            raise ValueError(
                f"{self.name}: num_classes={self.num_classes} but {len(self.class_names)} class names "
                f"and {len(self.palette)} palette colors"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d[VERSION_KEY] = __version__
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read ``config.json``; ValueError naming the fields (and the writer's version) this version lacks."""
        if not isinstance(d, dict):
            raise ValueError("expected a JSON object")
        d = dict(d)
        written_by = d.pop(VERSION_KEY, None)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            origin = f"written by refineseg {written_by}" if written_by else "written by another refineseg version"
            raise ValueError(
                f"fields {', '.join(unknown)} are unknown to refineseg {__version__} ({origin}; "
                "upgrade refineseg to read it)"
            )
        return cls(**d)
