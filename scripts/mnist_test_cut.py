"""MNIST's test set cut into a training and a test split, as an .npz file for ``data=npz``: Figure 1 offline.

    python scripts/mnist_test_cut.py FOLDER                       # outputs/mnist_cut.npz: 8000 + 2000 images
    python scripts/mnist_test_cut.py FOLDER --n-train 5000 --n-test 5000 --out outputs/cut.npz
    make figure1 ARGS="data=npz data.path=outputs/mnist_cut.npz data.normalize=none"

FOLDER holds MNIST's two test files, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or
gzipped (.gz); they are read by the idx reader of ``bcd-train data.root=...`` (bcd_cli.data.loaders), with its
checks of the header, size and labels. The file written holds X (the first ``--n-train`` images) and y,
X_test (the last ``--n-test`` images) and y_test: each image flattened to 784 pixels divided by 255, as
float32, the labels as int64. The two splits never share an image: their sizes may add up to at most the
10000 images of the folder. Fashion-MNIST's test files, of the same format, are cut the same way.

A missing or damaged file, or cut sizes the folder cannot give, end the script with one line naming the
file or the option, and exit status 2.
"""

from __future__ import annotations

import argparse
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
    images = read_idx(idx_file(folder, IMAGES), images=True).numpy()
    labels = read_idx(idx_file(folder, LABELS), images=False).numpy()
    if len(images) != len(labels):
        raise DataError(f"{folder}: {IMAGES} holds {len(images)} images but {LABELS} holds {len(labels)} labels")
    if n_train < 1 or n_test < 1 or n_train + n_test > len(images):
        raise ValueError(
            f"--n-train {n_train} and --n-test {n_test}: each must be at least 1 and together at most the "
            f"{len(images)} images of {folder}"
        )
    X = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    y = labels.astype(np.int64)
    return {"X": X[:n_train], "y": y[:n_train], "X_test": X[-n_test:], "y_test": y[-n_test:]}


def main(argv: list[str] | None = None) -> int:
    """The command line: writes the .npz file and prints its path and sizes; 2 with one line on an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help=f"a folder holding {IMAGES} and {LABELS} (plain or .gz)")
    parser.add_argument("--n-train", type=int, default=8000, help="images of the training split, from the first")
    parser.add_argument("--n-test", type=int, default=2000, help="images of the test split, from the last")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the .npz file written ({DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        arrays = cut(args.folder, args.n_train, args.n_test)
    except (DataError, ValueError) as err:
        print(f"mnist_test_cut: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f:  # the name as given: savez would add .npz to a name without it
        np.savez(f, **arrays)
    print(f"{args.out}: X {arrays['X'].shape}, X_test {arrays['X_test'].shape} (pixels / 255, float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
