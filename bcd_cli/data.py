"""Data sets for bcd-cli: scikit-learn digits, MNIST and Fashion-MNIST.

Every data set comes back as feature-by-sample matrices (one column per sample),
pixels scaled to [0, 1], one-hot targets, in the requested dtype and device.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from bcd_cli.engine.parallel import local_columns, world_size
from bcd_cli.errors import ConfigError, DataError

_Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]  # X_tr, y_tr, X_te, y_te, source

log = logging.getLogger(__name__)

NAMES = ("digits", "mnist", "fashion_mnist")
# the four standard idx files: train images, train labels, test images, test labels
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_HINT = f"a folder holding the four idx files {', '.join(IDX_FILES)} (each plain or gzipped .gz)"


@dataclass(frozen=True)
class Dataset:
    """A train/test split on one dtype and device.

    X is d0 x n (one contiguous column per sample, values in [0, 1]), Y is
    n_classes x n one-hot, y holds the n int64 labels.
    """

    name: str
    X_train: torch.Tensor
    Y_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    Y_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    # in a data-parallel run this process holds a shard: the sample counts of the whole data set
    n_train_all: int | None = None
    n_test_all: int | None = None

    @property
    def n_features(self) -> int:
        return self.X_train.shape[0]

    @property
    def n_train(self) -> int:
        """Training samples of the whole data set (all ranks' shards together)."""
        return self.X_train.shape[1] if self.n_train_all is None else self.n_train_all

    @property
    def n_test(self) -> int:
        """Test samples of the whole data set (all ranks' shards together)."""
        return self.X_test.shape[1] if self.n_test_all is None else self.n_test_all


def shard(data: Dataset) -> Dataset:
    """This rank's contiguous share of the train and test samples in a data-parallel run; ``data`` in one process."""
    if world_size() == 1:
        return data
    train, test = [local_columns(t) for t in (data.X_train, data.Y_train)], local_columns(data.X_test)
    return dataclasses.replace(
        data,
        X_train=train[0], Y_train=train[1], y_train=local_columns(data.y_train),
        X_test=test, Y_test=local_columns(data.Y_test), y_test=local_columns(data.y_test),
        n_train_all=data.n_train, n_test_all=data.n_test,
    )  # fmt: skip


def load_data(cfg: DictConfig | Mapping[str, Any], *, dtype: torch.dtype, device: torch.device) -> Dataset:
    """Load the data set named by ``cfg.name`` (the ``data`` config node, or a plain dict)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    name = cfg.get("name")
    if name not in NAMES:
        raise ConfigError("data.name", name, f"one of {', '.join(NAMES)}")
    if name == "digits":
        Xtr, ytr, Xte, yte, source = _digits(cfg)
    elif cfg.get("root") is None:
        Xtr, ytr, Xte, yte, source = _download(name, cfg)
    else:
        Xtr, ytr, Xte, yte, source = _local(Path(os.path.expanduser(str(cfg.root))))
    scale = 16.0 if name == "digits" else 255.0  # digits pixels are 0..16, (Fashion-)MNIST 0..255
    # Subsets are deterministic: the first n samples of each split, in file (or split) order.
    n_tr = _subset_size(cfg, "n_train", len(ytr))
    n_te = _subset_size(cfg, "n_test", len(yte))
    n_classes = 10
    X_train, Y_train, y_train = _to_device(Xtr[:n_tr], ytr[:n_tr], scale, n_classes, dtype, device)
    X_test, Y_test, y_test = _to_device(Xte[:n_te], yte[:n_te], scale, n_classes, dtype, device)
    log.info("loaded %s from %s: %d features, %d train, %d test", name, source, X_train.shape[0], n_tr, n_te)
    return Dataset(name, X_train, Y_train, y_train, X_test, Y_test, y_test, n_classes)


def _subset_size(cfg: DictConfig, key: str, size: int) -> int:
    """Validate ``cfg[key]`` (None means all) against the split size."""
    n = cfg.get(key)
    if n is None:
        return size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise ConfigError(f"data.{key}", n, f"an integer in 1..{size}, or null for all")
    return n


def _to_device(
    X: torch.Tensor, y: torch.Tensor, scale: float, n_classes: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n x d raw features and n labels -> (d x n scaled X, n_classes x n one-hot Y, int64 labels), on device."""
    X = X.reshape(len(X), -1).to(device=device, dtype=dtype).div(scale).T.contiguous()
    y = y.to(device=device, dtype=torch.int64)
    Y = F.one_hot(y, n_classes).T.to(dtype).contiguous()
    return X, Y, y


def _digits(cfg: DictConfig) -> _Splits:
    """scikit-learn's bundled 8x8 digits, split by a stratified, seeded train_test_split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    frac, seed = cfg.get("test_fraction", 0.25), cfg.get("split_seed", 0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError("data.test_fraction", frac, "a number strictly between 0 and 1")
    X, y = load_digits(return_X_y=True)
    try:
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=frac, random_state=seed, stratify=y)
    except ValueError as exc:  # e.g. too few test samples to hold every class
        allowed = f"a fraction leaving every class both train and test samples ({exc})"
        raise ConfigError("data.test_fraction", frac, allowed) from exc
    t = torch.from_numpy
    return t(Xtr), t(ytr), t(Xte), t(yte), "scikit-learn load_digits"


def _download(name: str, cfg: DictConfig) -> _Splits:
    """MNIST / Fashion-MNIST through torchvision, downloading into ``cfg.download_dir`` if needed."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = os.path.expanduser(str(cfg.get("download_dir", os.environ.get("BCD_DATA_DIR", "~/.cache/bcd-cli"))))
    download = bool(cfg.get("download", True))
    try:
        train, test = [cls(root=folder, train=split, download=download) for split in (True, False)]
        splits = [train.data, train.targets, test.data, test.targets]
    except (RuntimeError, OSError, AssertionError, ValueError) as exc:
        raw = Path(folder, cls.__name__, "raw")
        for i, name in enumerate(IDX_FILES):  # a damaged file in the cache: name it
            if (raw / name).is_file():
                try:
                    _read_idx(raw / name, images=i % 2 == 0)
                except DataError as bad:
                    raise DataError(f"{bad}; it is in the download cache: remove it to download it again") from exc
        reason = " ".join(str(exc).split()) or type(exc).__name__
        what = f"could not be downloaded to {folder}" if download else f"is not in {folder} and data.download=false"
        raise DataError(f"{cls.__name__} {what} ({reason}); offline, pass data.root=DIR, {_IDX_HINT}") from exc
    _check(*splits, where=[Path(folder, cls.__name__, "raw", f) for f in IDX_FILES])
    return (*splits, f"torchvision ({folder})")


def _local(root: Path) -> _Splits:
    """Read the four idx files from ``root`` (offline; no checksum checks)."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "folder does not exist"
        raise DataError(f"data.root={root}: {state}; it must be {_IDX_HINT}")
    candidates: list[list[Path]] = []
    for name in IDX_FILES:
        found = [p for p in (root / name, root / f"{name}.gz") if p.is_file()]
        if not found:
            raise DataError(
                f"{root / name}: missing (neither {name} nor {name}.gz found); data.root must be {_IDX_HINT}"
            )
        candidates.append(found)
    read = [[_read_idx(p, images=i % 2 == 0) for p in found] for i, found in enumerate(candidates)]
    for found, tensors in zip(candidates, read, strict=True):
        if len(tensors) == 2 and not torch.equal(*tensors):
            raise DataError(f"{found[0]} and {found[1]} disagree: keep one of them in data.root")
    paths = [found[0] for found in candidates]
    Xtr, ytr, Xte, yte = (tensors[0] for tensors in read)
    _check(Xtr, ytr, Xte, yte, where=paths)
    return Xtr, ytr, Xte, yte, str(root)


def _read_idx(path: Path, *, images: bool) -> torch.Tensor:
    """Read one uint8 idx file (plain or .gz) with torchvision's parser, turning any failure into a DataError."""
    from torchvision.datasets import mnist as tv

    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read or is a corrupt/truncated gzip file ({exc})") from exc
    ndim = 3 if images else 1
    want = 0x0800 + ndim
    if len(raw) < 4 * (ndim + 1):
        raise DataError(f"{path}: {len(raw)} bytes is too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[:2] != b"\0\0" or raw[3] != ndim:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{want:08x} "
            f"({'images' if images else 'labels'} idx file)"
        )
    if raw[2] != 0x08:
        raise DataError(f"{path}: idx data type code 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    what = "images" if images else "labels"
    if dims[0] == 0:
        raise DataError(f"{path}: holds no {what} (its header says 0)")
    expected = 4 * (ndim + 1) + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"{path}: corrupt or truncated idx file: {len(raw)} bytes, but its header ({'x'.join(map(str, dims))} "
            f"{what}) makes {expected}"
        )
    reader = tv.read_image_file if images else tv.read_label_file
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory() as tmp:  # torchvision's reader only opens plain files by name
            plain = Path(tmp, path.stem)
            plain.write_bytes(raw)
            return reader(str(plain))
    except (AssertionError, RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: corrupt or truncated idx file: its data size does not match its header") from exc


def _check(Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor, yte: torch.Tensor, *, where: list[Path]) -> None:
    """Check counts, image size and label range of both splits; ``where`` names the four files."""
    for X, y, fx, fy in ((Xtr, ytr, where[0], where[1]), (Xte, yte, where[2], where[3])):
        if len(X) != len(y):
            raise DataError(f"{fx} holds {len(X)} images but {fy} holds {len(y)} labels")
        if len(X) == 0:
            raise DataError(f"{fx} holds no images")
        if tuple(X.shape[1:]) != (28, 28):
            raise DataError(f"{fx}: images are {'x'.join(map(str, X.shape[1:]))}, expected 28x28")
        if int(y.min()) < 0 or int(y.max()) > 9:
            raise DataError(f"{fy}: labels span {int(y.min())}..{int(y.max())}, expected 0..9")
