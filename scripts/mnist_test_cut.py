"""MNIST's test set cut into a training and a test split, as an .npz file for ``data=npz`` or as a folder of idx
files for ``data=mnist data.root=...``: MNIST experiments offline.

    python scripts/mnist_test_cut.py FOLDER                       # outputs/mnist_cut.npz: 8000 + 2000 images
    python scripts/mnist_test_cut.py FOLDER --n-train 5000 --n-test 5000 --out outputs/cut.npz
    make figure1 ARGS="data=npz data.path=outputs/mnist_cut.npz data.normalize=none"
    python scripts/mnist_test_cut.py FOLDER --idx outputs/mnist_cut # the same cut as the four idx files (gzipped)
    bcd-train data=mnist data.root=outputs/mnist_cut               # read as MNIST itself, with its normalisation

FOLDER holds MNIST's two test files, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or
gzipped (.gz); they are read by the idx reader of ``bcd-train data.root=...`` (bcd_cli.data.loaders), with its
checks of the header, size and labels. The file written holds X (the first ``--n-train`` images) and y,
X_test (the last ``--n-test`` images) and y_test: each image flattened to 784 pixels divided by 255, as
float32, the labels as int64. With ``--idx DIR`` the cut is written instead as the four gzipped idx files
of MNIST (``train-*`` the training split, ``t10k-*`` the test split, the original uint8 pixels), which
``data=mnist data.root=DIR`` (or ``data=fashion_mnist``) reads like the full data set. The two splits never
share an image: their sizes may add up to at most the 10000 images of the folder. Fashion-MNIST's test
files, of the same format, are cut the same way.

A missing or damaged file, or cut sizes the folder cannot give, end the script with one line naming the
file or the option, and exit status 2.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from bcd_cli.data.loaders import IDX_FILES, read_idx
from bcd_cli.errors import DataError

IMAGES, LABELS = IDX_FILES[2], IDX_FILES[3]  # t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
DEFAULT_OUT = Path("outputs") / "mnist_cut.npz"


def idx_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, whichever is there; DataError naming the file when neither is."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected a folder holding {IMAGES} and {LABELS} (plain or .gz)")
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz found in {folder})")


def cut(folder: Path, n_train: int = 8000, n_test: int = 2000) -> dict[str, np.ndarray]:
    """The arrays of the .npz file: X, y from the first ``n_train`` test images, X_test, y_test from the last
    ``n_test``. DataError when a file is missing or damaged, ValueError when the sizes do not fit."""
    Xtr, ytr, Xte, yte = cut_idx(folder, n_train, n_test).values()

    def flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)

    return {"X": flat(Xtr), "y": ytr.astype(np.int64), "X_test": flat(Xte), "y_test": yte.astype(np.int64)}


def cut_idx(folder: Path, n_train: int = 8000, n_test: int = 2000) -> dict[str, np.ndarray]:
    """The four idx files' arrays of the cut, by file name: the first ``n_train`` test images and labels as
    the training files, the last ``n_test`` as the test files, uint8 as read. Errors as ``cut``."""
    images = read_idx(idx_file(folder, IMAGES), images=True).numpy()
    labels = read_idx(idx_file(folder, LABELS), images=False).numpy()
    if len(images) != len(labels):
        raise DataError(f"{folder}: {IMAGES} holds {len(images)} images but {LABELS} holds {len(labels)} labels")
    if n_train < 1 or n_test < 1 or n_train + n_test > len(images):
        raise ValueError(
            f"--n-train {n_train} and --n-test {n_test}: each must be at least 1 and together at most the "
            f"{len(images)} images of {folder}"
        )
    images = images.reshape(len(images), 28, 28) if images.ndim == 2 else images
    parts = (images[:n_train], labels[:n_train], images[-n_test:], labels[-n_test:])
    return {name: np.ascontiguousarray(a, dtype=np.uint8) for name, a in zip(IDX_FILES, parts, strict=True)}


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as a gzipped idx file: magic 0x0000 08 NDIM, each dimension big-endian, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:  # fast; the files are rewritten, not archived
        f.write(header + array.tobytes())


def main(argv: list[str] | None = None) -> int:
    """The command line: writes the .npz file and prints its path and sizes; 2 with one line on an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help=f"a folder holding {IMAGES} and {LABELS} (plain or .gz)")
    parser.add_argument("--n-train", type=int, default=8000, help="images of the training split, from the first")
    parser.add_argument("--n-test", type=int, default=2000, help="images of the test split, from the last")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the .npz file written ({DEFAULT_OUT})")
    parser.add_argument("--idx", type=Path, default=None, metavar="DIR",
                        help="write the cut as four gzipped idx files in DIR (for data=mnist data.root=DIR) "
                             "instead of the .npz file")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        arrays = cut_idx(args.folder, args.n_train, args.n_test) if args.idx else cut(args.folder, args.n_train,
                                                                                       args.n_test)  # fmt: skip
    except (DataError, ValueError) as err:
        print(f"mnist_test_cut: {err}", file=sys.stderr)
        return 2
    if args.idx:
        args.idx.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            write_idx(args.idx / f"{name}.gz", array)
        print(f"{args.idx}: {args.n_train} training and {args.n_test} test images as gzipped idx files")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f:  # the name as given: savez would add .npz to a name without it
        np.savez(f, **arrays)
    print(f"{args.out}: X {arrays['X'].shape}, X_test {arrays['X_test'].shape} (pixels / 255, float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
