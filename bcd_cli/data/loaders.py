"""Data sets for bcd-cli: scikit-learn digits, MNIST, Fashion-MNIST, CIFAR-10, and one's own .npz or CSV files.

Every data set comes back as feature-by-sample matrices (one column per sample), normalised as
``data.normalize`` says, one-hot targets, in the requested dtype and device. Labels become classes
0..K-1: the ten classes of the image data sets, or the sorted labels of the training split of one's own
data. How the data was prepared (the classes, the normalisation's statistics, the files read and their
SHA-256) is recorded in the run folder's data.json, which a resumed run reads back instead of computing
it again, so that it trains on exactly the numbers the run started with.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bcd_cli.data.files import Splits, download_cifar, read_cifar_folder, read_csv, read_npz, sha256, split_seeded
from bcd_cli.engine.parallel import local_columns, world_size
from bcd_cli.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "npz", "csv")
# the image data sets: their largest pixel value (digits 0..16, the others 0..255); they have ten classes 0..9
PIXEL_MAX = {"digits": 16.0, "mnist": 255.0, "fashion_mnist": 255.0, "cifar10": 255.0}
NORMALIZE = ("none", "unit", "standard")
RECORD_FILE = "data.json"
# the four standard idx files: train images, train labels, test images, test labels
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_HINT = f"a folder holding the four idx files {', '.join(IDX_FILES)} (each plain or gzipped .gz)"
_CHUNK = 4096  # samples per pass when the normalisation's statistics are summed


@dataclass(frozen=True)
class Dataset:
    """A train/test split on one dtype and device.

    X is d0 x n (one contiguous column per sample, normalised as ``data.normalize`` says), Y is
    n_classes x n one-hot, y holds the n int64 classes. ``record`` is how the data was prepared
    (written to the run folder as data.json; None for data made in memory).
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
    record: dict[str, Any] | None = None

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


def load_data(
    cfg: Mapping[str, Any],
    *,
    dtype: torch.dtype,
    device: torch.device,
    folder: Path | None = None,
    resumed: bool = False,
) -> Dataset:
    """Load the data set named by ``cfg["name"]`` (the run spec's ``data`` settings: plain values).

    A ``resumed`` run in ``folder`` takes the classes and the normalisation's statistics from the folder's
    data.json (when it has one), after checking that every file read has the SHA-256 recorded there.
    Subsets are deterministic: the first ``n_train`` and ``n_test`` samples of each split, in file (or split) order.
    """
    cfg = dict(cfg)
    name = cfg.get("name")
    if name not in NAMES:
        raise ConfigError("data.name", name, f"one of {', '.join(NAMES)}")
    kind = cfg.get("normalize", "unit" if name in PIXEL_MAX else "standard")  # a run folder older than the key
    if kind not in NORMALIZE:
        scaled = "pixels / their maximum" if name in PIXEL_MAX else "min-max scaling from the training split"
        allowed = f"none, unit ({scaled}) or standard (per-feature mean and std of the training split)"
        raise ConfigError("data.normalize", kind, allowed)
    recorded = read_record(folder) if resumed and folder is not None else None
    splits = _read(name, cfg)
    files = _files(splits, recorded, folder)
    n_tr = _subset_size(cfg, "n_train", len(splits.y_train))
    n_te = _subset_size(cfg, "n_test", len(splits.y_test))
    Xtr, Xte = splits.X_train[:n_tr].reshape(n_tr, -1), splits.X_test[:n_te].reshape(n_te, -1)
    if recorded is not None:
        classes, stats = recorded["classes"], _recorded_statistics(recorded, Xtr.shape[1], folder)
    else:
        classes = list(range(10)) if name in PIXEL_MAX else np.unique(splits.y_train).tolist()
        stats = _statistics(kind, name, Xtr)
    ytr = _class_indices(splits.y_train[:n_tr], classes, splits.source, "training")
    yte = _class_indices(splits.y_test[:n_te], classes, splits.test_file or splits.source, "test")
    X_train, Y_train, y_train = _to_device(Xtr, ytr, stats, len(classes), dtype, device)
    X_test, Y_test, y_test = _to_device(Xte, yte, stats, len(classes), dtype, device)
    log.info("loaded %s from %s: %d features, %d train, %d test", name, splits.source, X_train.shape[0], n_tr, n_te)
    record = {
        "name": name, "source": splits.source, "files": files, "n_features": int(X_train.shape[0]),
        "n_train": n_tr, "n_test": n_te, "classes": classes,
        **({"label_names": splits.label_names} if splits.label_names else {}), "normalize": stats,
    }  # fmt: skip
    return Dataset(name, X_train, Y_train, y_train, X_test, Y_test, y_test, len(classes), record=record)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The data.json of a run folder; None where the run has none (it started before the file was written), so
    that the preparation is computed again, as such a run computed it."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("classes"), list) or not isinstance(record.get("normalize"), dict):
            raise ValueError("no classes or normalize entry")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{path}: unreadable data record ({' '.join(str(exc).split())}); remove it to prepare the data again "
            "from its files"
        ) from exc
    return record


def _read(name: str, cfg: Mapping[str, Any]) -> Splits:
    """The raw splits of data set ``name``."""
    readers = {"digits": _digits, "npz": read_npz, "csv": read_csv}
    if name in readers:
        return readers[name](cfg)
    root = cfg.get("root")
    if name == "cifar10":
        return download_cifar(cfg) if root is None else read_cifar_folder(Path(os.path.expanduser(str(root))))
    return _download(name, cfg) if root is None else _local(Path(os.path.expanduser(str(root))))


def _files(splits: Splits, recorded: dict[str, Any] | None, folder: Path | None) -> list[dict[str, Any]]:
    """The files read, with their sizes and SHA-256; a resumed run refuses a file that changed since it started."""
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)} for p in splits.files]
    if recorded is None:
        return files
    before = {entry.get("path"): entry.get("sha256") for entry in recorded.get("files", [])}
    for entry in files:
        if before.get(entry["path"]) != entry["sha256"]:
            record = Path(str(folder), RECORD_FILE)
            what = "was not read when the run started" if entry["path"] not in before else "changed since the run"
            raise DataError(
                f"{entry['path']}: {what} (its SHA-256 differs from the one in {record}); the resumed run would "
                "train on other data: restore the file, or start a new run"
            )
    return files


def _subset_size(cfg: Mapping[str, Any], key: str, size: int) -> int:
    """Validate ``cfg[key]`` (None means all) against the split size."""
    n = cfg.get(key)
    if n is None:
        return size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise ConfigError(f"data.{key}", n, f"an integer in 1..{size}, or null for all")
    return n


def _class_indices(y: np.ndarray, classes: list[Any], where: str, split: str) -> np.ndarray:
    """Labels as classes 0..K-1 (the index of each label in ``classes``); a label outside them is refused."""
    known = np.asarray(classes)
    order = np.argsort(known, kind="stable")
    if len(known) and (known.dtype.kind in "iu") == (y.dtype.kind in "iu"):  # labels of the classes' kind
        found = order[np.minimum(np.searchsorted(known[order], y), len(known) - 1)]
        unknown = known[found] != y
    else:  # numbers against text, or no classes: no label is known
        found, unknown = np.zeros(len(y), dtype=np.int64), np.ones(len(y), dtype=bool)
    if unknown.any():
        label = y[int(np.argmax(unknown))].item()
        shown = ", ".join(map(repr, classes[:20])) + (", ..." if len(classes) > 20 else "")
        raise DataError(f"{where}: {split} label {label!r} is not among the training labels ({shown})")
    return found


def _statistics(kind: str, name: str, X: np.ndarray) -> dict[str, Any]:
    """The normalisation of ``kind`` with its statistics from the training samples ``X`` (n x d), as recorded.

    ``unit`` divides pixels by their maximum for the image data sets, and scales each feature of one's own data
    from its training min..max to 0..1; ``standard`` subtracts each feature's training mean and divides by its
    standard deviation. A constant feature is only shifted (to 0): its scale is 1."""
    if kind == "none":
        return {"kind": "none"}
    if kind == "unit" and name in PIXEL_MAX:
        return {"kind": "unit", "scale": PIXEL_MAX[name]}
    lo, hi = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
    if kind == "unit":
        return {"kind": "unit", "min": lo.tolist(), "max": hi.tolist()}
    n = len(X)
    mean = sum(X[i : i + _CHUNK].sum(axis=0, dtype=np.float64) for i in range(0, n, _CHUNK)) / n
    squares = sum(((X[i : i + _CHUNK] - mean) ** 2).sum(axis=0) for i in range(0, n, _CHUNK))
    std = np.sqrt(squares / n)
    constant = hi == lo
    mean[constant], std[constant] = lo[constant], 1.0
    return {"kind": "standard", "mean": mean.tolist(), "std": std.tolist()}


def _recorded_statistics(recorded: dict[str, Any], d: int, folder: Path | None) -> dict[str, Any]:
    """The normalisation a run folder recorded, checked against the number of features ``d``."""
    stats = recorded["normalize"]
    lengths = {len(v) for v in stats.values() if isinstance(v, list)}
    if stats.get("kind") not in NORMALIZE or lengths - {d}:
        raise DataError(
            f"{Path(str(folder), RECORD_FILE)}: its normalisation ({stats.get('kind')!r}, statistics for "
            f"{', '.join(map(str, sorted(lengths))) or 'no'} features) does not fit the data's {d} features"
        )
    return stats


def _to_device(
    X: np.ndarray, y: np.ndarray, stats: dict[str, Any], n_classes: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n x d raw features and n classes -> (d x n normalised X, n_classes x n one-hot Y, int64 classes), on device.

    X is normalised in place in its d x n copy: no other n-sized temporary."""
    source = torch.from_numpy(np.ascontiguousarray(X))
    X_t = torch.empty(source.shape[::-1], dtype=dtype, device=device)
    X_t.copy_(source.T)  # its own d x n copy, whatever the shape: the raw arrays are never written
    if "scale" in stats:
        X_t.div_(stats["scale"])
    elif stats["kind"] != "none":
        shift, scale = (stats["mean"], stats["std"]) if stats["kind"] == "standard" else (stats["min"], stats["max"])
        shift_t, scale_t = (torch.tensor(v, dtype=torch.float64) for v in (shift, scale))
        if stats["kind"] == "unit":  # max - min, 1 for a constant feature
            scale_t = torch.where(scale_t > shift_t, scale_t - shift_t, torch.ones_like(scale_t))
        X_t.sub_(shift_t.to(device=device, dtype=dtype)[:, None]).div_(scale_t.to(device=device, dtype=dtype)[:, None])
    y_t = torch.from_numpy(y).to(device=device, dtype=torch.int64)
    Y = F.one_hot(y_t, n_classes).T.to(dtype).contiguous()
    return X_t, Y, y_t


def _digits(cfg: Mapping[str, Any]) -> Splits:
    """scikit-learn's bundled 8x8 digits, split by a stratified, seeded train_test_split."""
    from sklearn.datasets import load_digits

    source = "scikit-learn load_digits"
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = split_seeded(X, y, cfg, source)
    return Splits(Xtr, ytr, Xte, yte, source)


def _download(name: str, cfg: Mapping[str, Any]) -> Splits:
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
                    read_idx(raw / name, images=i % 2 == 0)
                except DataError as bad:
                    raise DataError(f"{bad}; it is in the download cache: remove it to download it again") from exc
        reason = " ".join(str(exc).split()) or type(exc).__name__
        what = f"could not be downloaded to {folder}" if download else f"is not in {folder} and data.download=false"
        raise DataError(f"{cls.__name__} {what} ({reason}); offline, pass data.root=DIR, {_IDX_HINT}") from exc
    paths = [Path(folder, cls.__name__, "raw", f) for f in IDX_FILES]
    _check(*splits, where=paths)
    Xtr, ytr, Xte, yte = (t.numpy() for t in splits)
    return Splits(Xtr, ytr, Xte, yte, f"torchvision ({folder})", [p for p in paths if p.is_file()], str(paths[3]))


def _local(root: Path) -> Splits:
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
    read = [[read_idx(p, images=i % 2 == 0) for p in found] for i, found in enumerate(candidates)]
    for found, tensors in zip(candidates, read, strict=True):
        if len(tensors) == 2 and not torch.equal(*tensors):
            raise DataError(f"{found[0]} and {found[1]} disagree: keep one of them in data.root")
    paths = [found[0] for found in candidates]
    Xtr, ytr, Xte, yte = (tensors[0] for tensors in read)
    _check(Xtr, ytr, Xte, yte, where=paths)
    files = [p for found in candidates for p in found]
    return Splits(Xtr.numpy(), ytr.numpy(), Xte.numpy(), yte.numpy(), str(root), files, str(paths[3]))


def read_idx(path: Path, *, images: bool) -> torch.Tensor:
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
