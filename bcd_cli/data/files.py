"""Readers of data of one's own: arrays in an .npz file, a table in CSV files, CIFAR-10 (downloaded or a local folder).

Each reader checks what it reads and refuses a bad file with one line naming the file and what is wrong
(``DataError``); it returns the raw ``Splits``: features as an n x ... array, labels as read (integers or
strings), and the files it read, whose content hashes the run folder records (``bcd_cli.data.loaders``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcd_cli.errors import ConfigError, DataError

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_FEATURES = 3 * 32 * 32
_CIFAR_HINT = f"a folder holding {CIFAR_FOLDER}/ (or its files {', '.join(CIFAR_TRAIN)}, {CIFAR_TEST}, {CIFAR_META})"
# what a CIFAR batch pickle may build: numpy arrays and their dtypes, nothing else (no code runs while reading)
_PICKLED_NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_NUMERIC = "biuf"  # numpy dtype kinds read as numbers: bool, signed and unsigned integers, floats
_MAX_LISTED = 20  # column or array names listed in a refusal


@dataclass
class Splits:
    """A data set as read: n x ... features and n labels of each split; ``files`` were read to make them;
    ``test_file`` names where the test labels come from (for a refusal); ``label_names`` are CIFAR's."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    source: str
    files: list[Path] = field(default_factory=list)
    test_file: str = ""
    label_names: list[str] | None = None


def sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def data_path(cfg: Mapping[str, Any], key: str, what: str) -> Path:
    """The existing file named by ``data.<key>``; ConfigError when unset, DataError when it is not a file."""
    value = cfg.get(key)
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"data.{key}", value, f"the path of {what}")
    path = Path(os.path.expanduser(str(value))).absolute()
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'does not exist'} (data.{key})")
    return path


def _listed(names: Sequence[object]) -> str:
    shown = ", ".join(map(str, names[:_MAX_LISTED]))
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "") if names else "none"


# ---------------------------------------------------------------- checks shared by the readers


def split_seeded(X: np.ndarray, y: np.ndarray, cfg: Mapping[str, Any], where: str) -> tuple[np.ndarray, ...]:
    """A stratified train/test split of ``data.test_fraction`` seeded by ``data.split_seed`` (as digits is split):
    returns X_train, X_test, y_train, y_test."""
    from sklearn.model_selection import train_test_split

    frac, seed = cfg.get("test_fraction", 0.25), cfg.get("split_seed", 0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError("data.test_fraction", frac, "a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("data.split_seed", seed, "an integer >= 0")
    try:
        return tuple(train_test_split(X, y, test_size=frac, random_state=seed, stratify=y))
    except ValueError as exc:  # a class too small to be in both splits, or too few test samples for every class
        allowed = (
            f"a fraction leaving every class of {where} both train and test samples ({' '.join(str(exc).split())}); "
            "or more samples per class, or a separate test split"
        )
        raise ConfigError("data.test_fraction", frac, allowed) from exc


def check_features(X: np.ndarray, where: str, what: str) -> np.ndarray:
    """``X`` as n x d numbers (n >= 1, every value finite), in a dtype torch reads."""
    if X.dtype.kind not in _NUMERIC:
        raise DataError(f"{where}: {what} holds {X.dtype} values, expected numbers")
    if X.ndim == 0 or len(X) == 0:
        raise DataError(f"{where}: {what} holds no samples (shape {X.shape})")
    X = X.reshape(len(X), -1)
    if X.shape[1] == 0:
        raise DataError(f"{where}: {what} has no features (shape {X.shape})")
    if X.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(X)))
        if bad:
            raise DataError(f"{where}: {what} holds {bad} NaN or infinite value{'s' * (bad > 1)}")
    if X.dtype.kind == "b" or (X.dtype.kind == "u" and X.dtype.itemsize > 1) or X.dtype == np.float16:
        X = X.astype(np.float64)  # types torch does not convert from, or converts with loss
    return X


def check_labels(y: np.ndarray, where: str, what: str) -> np.ndarray:
    """``y`` as one label per sample: int64 integers (whole numbers given as floats included) or strings."""
    if y.ndim != 1:
        raise DataError(f"{where}: {what} has shape {y.shape}, expected one label per sample (n,)")
    kind = y.dtype.kind
    if kind == "S":
        return y.astype(str)
    if kind == "U":
        return y
    if kind in "biu":
        return y.astype(np.int64)
    if kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise DataError(f"{where}: {what} holds {bad} NaN or infinite label{'s' * (bad > 1)}")
        fractional = y[y != np.round(y)]
        if len(fractional):
            raise DataError(f"{where}: {what} holds non-integer labels such as {fractional[0]}: use integers or text")
        return y.astype(np.int64)
    raise DataError(f"{where}: {what} holds {y.dtype} values, expected integer or text labels")


def check_pair(X: np.ndarray, y: np.ndarray, where: str, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of one split checked alone and against each other."""
    X, y = check_features(X, where, names[0]), check_labels(y, where, names[1])
    if len(X) != len(y):
        raise DataError(f"{where}: {names[0]} holds {len(X)} samples but {names[1]} holds {len(y)} labels")
    return X, y


def check_classes(y: np.ndarray, where: str, what: str) -> None:
    """Classification needs two classes at least."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(
            f"{where}: {what} holds a single class ({classes.tolist()[0]!r}); classification needs two at least"
        )


# ---------------------------------------------------------------- npz


def read_npz(cfg: Mapping[str, Any]) -> Splits:
    """Arrays ``X`` (n x ...) and ``y`` (n) of ``data.path``, with ``X_test``/``y_test`` or a seeded split.

    Read with ``allow_pickle=False``: an object array, which only pickle can hold, is refused."""
    path = data_path(cfg, "path", "an .npz file with arrays X and y (numpy.savez)")
    where = str(path)
    arrays = _npz_arrays(path)
    missing = [name for name in ("X", "y") if name not in arrays]
    if missing:
        raise DataError(f"{where}: no array {' or '.join(missing)}; it holds {_listed(sorted(arrays))}")
    X, y = check_pair(arrays["X"], arrays["y"], where, ("X", "y"))
    has_test = [name for name in ("X_test", "y_test") if name in arrays]
    if len(has_test) == 1:
        other = "y_test" if has_test[0] == "X_test" else "X_test"
        raise DataError(f"{where}: holds {has_test[0]} but no {other}: give both, or neither for a seeded split")
    if has_test:
        X_test, y_test = check_pair(arrays["X_test"], arrays["y_test"], where, ("X_test", "y_test"))
        if X_test.shape[1] != X.shape[1]:
            raise DataError(
                f"{where}: X_test has {X_test.shape[1]} features per sample but X has {X.shape[1]}"
                f" (X_test shape {arrays['X_test'].shape}, X shape {arrays['X'].shape})"
            )
    check_classes(y, where, "y")
    if not has_test:
        X, X_test, y, y_test = split_seeded(X, y, cfg, where)
    return Splits(X, y, X_test, y_test, where, [path], where)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without pickle; any failure is a DataError naming the file."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise DataError(f"{path}: a single .npy array, not an .npz archive holding arrays X and y (numpy.savez)")
    if not head.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz file (a zip archive of .npy arrays, as numpy.savez writes)")
    corrupt = (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, ValueError)
    try:
        npz = np.load(path, allow_pickle=False)
    except corrupt as exc:
        raise DataError(f"{path}: corrupt or truncated .npz file ({' '.join(str(exc).split())})") from exc
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError as exc:
                if "allow_pickle" not in str(exc) and "Object arrays" not in str(exc):
                    raise DataError(f"{path}: array {name} is corrupt ({' '.join(str(exc).split())})") from exc
                raise DataError(
                    f"{path}: array {name} holds Python objects (a pickled object array), which are not read; "
                    "save numbers, or text labels as a string array"
                ) from exc
            except corrupt as exc:
                reason = " ".join(str(exc).split())
                raise DataError(f"{path}: array {name} is corrupt or truncated ({reason})") from exc
    if not arrays:
        raise DataError(f"{path}: an .npz file holding no arrays; it needs X and y")
    return arrays


# ---------------------------------------------------------------- csv


def read_csv(cfg: Mapping[str, Any]) -> Splits:
    """Numeric feature columns and the ``data.target`` column of ``data.path`` (a header line first); the test
    samples from ``data.test_path`` or a seeded split."""
    path = data_path(cfg, "path", "a CSV file with a header line")
    target = cfg.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigError("data.target", target, "the name of the label column of the CSV file")
    features = cfg.get("features")
    if features is not None and (
        isinstance(features, str) or not all(isinstance(c, str) for c in features) or not len(features)
    ):
        raise ConfigError("data.features", features, "a non-empty list of column names, or null for all but target")
    features = list(features) if features is not None else None
    if features is not None and target in features:
        raise ConfigError("data.features", features, f"feature columns other than the target column {target!r}")
    X, y, columns = _csv_table(path, target, features)
    where = str(path)
    check_classes(y, where, f"column {target!r}")
    if cfg.get("test_path") is None:
        X, X_test, y, y_test = split_seeded(X, y, cfg, where)
        return Splits(X, y, X_test, y_test, where, [path], where)
    test_path = data_path(cfg, "test_path", "a CSV file of test samples with the columns of data.path")
    X_test, y_test, _ = _csv_table(test_path, target, columns)
    return Splits(X, y, X_test, y_test, f"{where} and {test_path}", [path, test_path], str(test_path))


def _csv_table(path: Path, target: str, features: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A CSV file's feature columns as floats, its target column as labels, and the feature columns' names."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty, no header line") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({' '.join(str(exc).split())[:200]})") from exc
    columns = [str(c) for c in table.columns]
    table.columns = columns
    wanted = [c for c in columns if c != target] if features is None else features
    missing = [c for c in [target, *wanted] if c not in columns]
    if missing:
        what = "target column" if missing[0] == target else "feature column"
        raise DataError(f"{path}: no {what} {missing[0]!r}; its columns are {_listed(columns)}")
    if not wanted:
        raise DataError(f"{path}: no feature columns besides the target column {target!r}")
    if len(table) == 0:
        raise DataError(f"{path}: holds no samples (a header line only)")
    X = np.column_stack([_numeric_column(table[c], path, c) for c in wanted]).astype(np.float64)
    labels = table[target]
    if labels.isna().any():
        row = int(np.argmax(labels.isna().to_numpy())) + 1
        raise DataError(
            f"{path}: target column {target!r} has {int(labels.isna().sum())} empty cells (first at row {row})"
        )
    y = labels.to_numpy()
    y = y.astype(str) if y.dtype == object else y
    return X, check_labels(y, str(path), f"target column {target!r}"), wanted


def _numeric_column(column: Any, path: Path, name: str) -> np.ndarray:
    """One feature column as float64; refuses text that is not a number and missing or non-finite values, naming
    the column and the first row (counted from 1 after the header line)."""
    import pandas as pd

    if column.dtype.kind in _NUMERIC:
        values = column.to_numpy(dtype=np.float64)
    else:
        coerced = pd.to_numeric(column, errors="coerce")
        text = (coerced.isna() & column.notna()).to_numpy()
        if text.any():
            row = int(np.argmax(text))
            raise DataError(f"{path}: feature column {name!r} is not numeric: row {row + 1} holds {column.iloc[row]!r}")
        values = coerced.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        count, row = int(bad.sum()), int(np.argmax(bad)) + 1
        raise DataError(
            f"{path}: feature column {name!r} holds {count} empty, NaN or infinite value{'s' * (count > 1)} "
            f"(first at row {row})"
        )
    return values


# ---------------------------------------------------------------- CIFAR-10


def read_cifar_folder(root: Path) -> Splits:
    """CIFAR-10's python batches from ``root`` (holding cifar-10-batches-py, or that folder itself), offline and
    without checksums: each batch a pickled dict with ``data`` (N x 3072 uint8, the red, green and blue 32x32
    planes of each image) and ``labels`` (N integers 0..9); batches.meta's ``label_names`` where present."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "folder does not exist"
        raise DataError(f"data.root={root}: {state}; it must be {_CIFAR_HINT}")
    folder = root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root
    for name in (*CIFAR_TRAIN, CIFAR_TEST):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing; data.root must be {_CIFAR_HINT}")
    train = [_cifar_batch(folder / name) for name in CIFAR_TRAIN]
    X_test, y_test = _cifar_batch(folder / CIFAR_TEST)
    X = np.concatenate([X for X, _ in train])
    y = np.concatenate([y for _, y in train])
    files = [folder / name for name in (*CIFAR_TRAIN, CIFAR_TEST)]
    names = None
    if (folder / CIFAR_META).is_file():
        meta = _unpickle(folder / CIFAR_META)
        names = meta.get("label_names")
        if not isinstance(names, list) or len(names) != 10:
            raise DataError(f"{folder / CIFAR_META}: no list of 10 label_names in it")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        files.append(folder / CIFAR_META)
    return Splits(X, y, X_test, y_test, str(folder), files, str(folder / CIFAR_TEST), names)


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle (a dict) with its keys as text; only numpy arrays may be built while reading it."""
    try:
        with open(path, "rb") as f:
            entry = _NumpyOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a CIFAR-10 python batch, corrupt or truncated ({reason})") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (a pickled {type(entry).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch's N x 3072 uint8 pixels and N labels 0..9, checked."""
    entry = _unpickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path}: no data or labels in it (it holds {_listed(sorted(entry))})")
    X, y = np.asarray(entry["data"]), np.asarray(entry["labels"])
    if X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != CIFAR_FEATURES or not len(X):
        raise DataError(f"{path}: data is {X.dtype} of shape {X.shape}, expected uint8 N x {CIFAR_FEATURES}")
    if y.shape != (len(X),) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: {len(X)} images but labels of shape {y.shape} ({y.dtype})")
    if int(y.min()) < 0 or int(y.max()) > 9:
        raise DataError(f"{path}: labels span {int(y.min())}..{int(y.max())}, expected 0..9")
    return X, y.astype(np.int64)


class _NumpyOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else: a file cannot run code by being read."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in _PICKLED_NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds")


def download_cifar(cfg: Mapping[str, Any]) -> Splits:
    """CIFAR-10 through torchvision (checksums checked), downloading into ``data.download_dir`` when needed."""
    from torchvision import datasets

    folder = os.path.expanduser(str(cfg.get("download_dir", os.environ.get("BCD_DATA_DIR", "~/.cache/bcd-cli"))))
    download = bool(cfg.get("download", True))
    try:
        train, test = [datasets.CIFAR10(root=folder, train=split, download=download) for split in (True, False)]
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        what = f"could not be downloaded to {folder}" if download else f"is not in {folder} and data.download=false"
        raise DataError(f"CIFAR-10 {what} ({reason}); offline, pass data.root=DIR, {_CIFAR_HINT}") from exc
    X, X_test = (np.asarray(d.data).transpose(0, 3, 1, 2).reshape(len(d.data), -1) for d in (train, test))
    batches = Path(folder, CIFAR_FOLDER)
    files = [batches / name for name in (*CIFAR_TRAIN, CIFAR_TEST, CIFAR_META)]
    y, y_test = (np.asarray(d.targets, dtype=np.int64) for d in (train, test))
    names = [str(n) for n in train.classes]
    return Splits(X, y, X_test, y_test, f"torchvision ({folder})", files, str(batches / CIFAR_TEST), names)
