"""Tests for bcd_cli.data.loaders: digits, local idx folders, torchvision download path, errors, real data."""

from __future__ import annotations

import gzip
import logging
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bcd_cli.data.loaders import IDX_FILES, Dataset, load_data
from bcd_cli.errors import ConfigError, DataError

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"


def load(dtype: torch.dtype = torch.float64, **cfg) -> Dataset:
    return load_data(cfg, dtype=dtype, device=CPU)


def write_idx(path: Path, arr: np.ndarray, magic: int | None = None) -> Path:
    """Write a uint8 idx file (big-endian header); gzip it when the name ends in .gz."""
    magic = 0x0800 + arr.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_folder(
    root: Path, gz: tuple[bool, ...] = (False,) * 4, n_train: int = 12, n_test: int = 7, size: int = 28
) -> dict[str, np.ndarray]:
    """Four synthetic idx files in root; gz[i] says whether file i is gzipped. Returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = (0, 255)  # both ends of the pixel range
    root.mkdir(parents=True, exist_ok=True)
    for (name, arr), zipped in zip(arrays.items(), gz, strict=True):
        write_idx(root / (name + ".gz" if zipped else name), arr)
    return arrays


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_onehot(caplog):
    with caplog.at_level(logging.INFO, logger="bcd_cli.data.loaders"):
        ds = load(name="digits")
    assert "digits" in caplog.text
    assert ds.name == "digits" and ds.n_classes == 10 and ds.n_features == 64
    assert ds.n_train + ds.n_test == 1797 and ds.n_test == 450
    assert ds.X_train.shape == (64, ds.n_train) and ds.X_test.shape == (64, ds.n_test)
    for X, Y, y in ((ds.X_train, ds.Y_train, ds.y_train), (ds.X_test, ds.Y_test, ds.y_test)):
        assert X.dtype == Y.dtype == torch.float64 and y.dtype == torch.int64
        assert X.is_contiguous() and Y.is_contiguous()
        assert X.min() == 0 and X.max() == 1
        assert Y.shape == (10, X.shape[1])
        assert torch.equal(Y.sum(0), torch.ones(X.shape[1], dtype=torch.float64))
        assert torch.equal(Y.argmax(0), y)


def test_digits_deterministic_and_seeded():
    a, b = load(name="digits"), load(name="digits", split_seed=0, test_fraction=0.25)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    c = load(name="digits", split_seed=1)
    assert not torch.equal(a.y_train, c.y_train)


def test_digits_stratified():
    ds = load(name="digits", test_fraction=0.1)
    assert set(ds.y_test.tolist()) == set(range(10))
    counts = torch.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19  # ~180 test samples, 10 balanced classes


def test_digits_subsets_are_first_n_and_float32():
    full = load(name="digits")
    sub = load(torch.float32, name="digits", n_train=100, n_test=50)
    assert sub.X_train.shape == (64, 100) and sub.Y_test.shape == (10, 50)
    assert sub.X_train.dtype == sub.Y_train.dtype == torch.float32
    assert torch.equal(sub.X_train, full.X_train[:, :100].float())
    assert torch.equal(sub.y_test, full.y_test[:50])


def test_yaml_options_load():
    ds = load_data(OmegaConf.load(REPO / "conf" / "data" / "digits.yaml"), dtype=torch.float64, device=CPU)
    assert ds.n_test == 450
    for name in ("mnist", "fashion_mnist"):
        cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        assert cfg.name == name and cfg.root is None and cfg.download is True
        assert cfg.n_train is None and cfg.n_test is None


def test_yaml_download_dir_env(monkeypatch):
    cfg = OmegaConf.load(REPO / "conf" / "data" / "mnist.yaml")
    monkeypatch.delenv("BCD_DATA_DIR", raising=False)
    assert cfg.download_dir == "~/.cache/bcd-cli"
    monkeypatch.setenv("BCD_DATA_DIR", "/somewhere/data")
    assert cfg.download_dir == "/somewhere/data"


# ---------------------------------------------------------------- local idx folders

LAYOUTS = {"plain": (False,) * 4, "gzip": (True,) * 4, "mixed": (True, False, False, True)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_local_folder_round_trip(tmp_path, name, layout, dtype):
    arrays = make_folder(tmp_path, LAYOUTS[layout])
    ds = load(dtype, name=name, root=str(tmp_path))
    assert ds.name == name and ds.n_features == 784 and ds.n_train == 12 and ds.n_test == 7
    imgs, labs = list(arrays.values())[0::2], list(arrays.values())[1::2]
    splits = [(ds.X_train, ds.Y_train, ds.y_train), (ds.X_test, ds.Y_test, ds.y_test)]
    for (X, Y, y), img, lab in zip(splits, imgs, labs, strict=True):
        expected = torch.from_numpy(img).reshape(len(img), 784).to(dtype).T / 255
        assert X.dtype == Y.dtype == dtype and X.is_contiguous()
        assert torch.equal(X, expected)
        assert torch.equal(y, torch.from_numpy(lab).long())
        assert torch.equal(Y.argmax(0), y) and torch.equal(Y.sum(0), torch.ones(len(lab), dtype=dtype))
    assert ds.X_train.min() == 0 and ds.X_train.max() == 1


def test_local_folder_record_names_the_files_read(tmp_path):
    make_folder(tmp_path, LAYOUTS["mixed"])
    record = load(name="mnist", root=tmp_path).record
    assert [Path(f["path"]).name for f in record["files"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz"
    ]  # fmt: skip
    assert record["classes"] == list(range(10)) and record["normalize"] == {"kind": "unit", "scale": 255.0}
    assert all(f["bytes"] == Path(f["path"]).stat().st_size for f in record["files"])


def test_local_subsets_are_first_n(tmp_path):
    make_folder(tmp_path, LAYOUTS["gzip"])
    full = load(name="mnist", root=tmp_path)
    sub = load(name="mnist", root=tmp_path, n_train=5, n_test=3)
    assert sub.X_train.shape == (784, 5) and sub.X_test.shape == (784, 3)
    assert torch.equal(sub.X_train, full.X_train[:, :5]) and torch.equal(sub.y_test, full.y_test[:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_local_on_cuda(tmp_path):
    make_folder(tmp_path)
    ds = load_data({"name": "mnist", "root": str(tmp_path)}, dtype=torch.float32, device=torch.device("cuda"))
    assert all(t.is_cuda for t in (ds.X_train, ds.Y_train, ds.y_train, ds.X_test, ds.Y_test, ds.y_test))


# ---------------------------------------------------------------- errors


def expect_data_error(match: str, **cfg) -> str:
    with pytest.raises(DataError) as info:
        load(**cfg)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_missing_root(tmp_path):
    msg = expect_data_error(str(tmp_path / "nope"), name="mnist", root=tmp_path / "nope")
    assert "does not exist" in msg


@pytest.mark.parametrize("missing", IDX_FILES)
def test_missing_one_file(tmp_path, missing):
    make_folder(tmp_path, LAYOUTS["mixed"])
    for p in tmp_path.glob(missing + "*"):
        p.unlink()
    msg = expect_data_error(str(tmp_path / missing), name="fashion_mnist", root=tmp_path)
    assert all(f in msg for f in IDX_FILES) and ".gz" in msg and "plain" in msg


def test_truncated_gzip(tmp_path):
    make_folder(tmp_path, LAYOUTS["gzip"])
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    msg = expect_data_error(str(p), name="mnist", root=tmp_path)
    assert "gzip" in msg


def test_garbage_in_gz_file(tmp_path):
    make_folder(tmp_path, LAYOUTS["gzip"])
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(b"this is not gzip at all" * 10)
    expect_data_error(str(p), name="mnist", root=tmp_path)


def test_garbage_plain_file(tmp_path):
    make_folder(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    msg = expect_data_error(str(p), name="mnist", root=tmp_path)
    assert "magic" in msg


def test_too_short_file(tmp_path):
    make_folder(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(b"\0\0")
    expect_data_error(str(p), name="mnist", root=tmp_path)


def test_wrong_magic(tmp_path):
    make_folder(tmp_path, LAYOUTS["gzip"])
    p = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(12, np.uint8), magic=0x0803)
    msg = expect_data_error(str(p), name="mnist", root=tmp_path)
    assert "0x00000803" in msg and "0x00000801" in msg


def test_wrong_dtype_code(tmp_path):
    make_folder(tmp_path)
    p = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8), magic=0x0D01)
    msg = expect_data_error(str(p), name="mnist", root=tmp_path)
    assert "0x0d" in msg and "0x08" in msg


@pytest.mark.parametrize("cut", [-100, +3])
def test_idx_size_mismatch(tmp_path, cut):
    make_folder(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    data = p.read_bytes()
    p.write_bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    msg = expect_data_error(str(p), name="mnist", root=tmp_path)
    assert "corrupt or truncated" in msg


def test_an_empty_idx_file_says_it_holds_nothing(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    msg = expect_data_error(str(tmp_path / "t10k-labels-idx1-ubyte"), name="mnist", root=tmp_path)
    assert "holds no labels" in msg and "does not match" not in msg


def test_a_plain_and_a_gzipped_file_that_disagree_are_refused(tmp_path):
    make_folder(tmp_path)
    plain = tmp_path / "train-labels-idx1-ubyte"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(plain.read_bytes()))
    load(name="mnist", root=str(tmp_path))  # the same labels twice: fine
    write_idx(tmp_path / "scratch", np.full(12, 3, np.uint8))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress((tmp_path / "scratch").read_bytes()))
    msg = expect_data_error(str(plain), name="mnist", root=tmp_path)
    assert "disagree" in msg and ".gz" in msg


def test_a_damaged_file_in_the_download_cache_is_named(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv

    make_folder(tmp_path / "src")

    def fake(url, download_root, filename, md5=None, **kwargs):
        shutil.copy(tmp_path / "src" / filename.removesuffix(".gz"), Path(download_root) / filename.removesuffix(".gz"))

    monkeypatch.setattr(tv, "download_and_extract_archive", fake)
    load(name="mnist", download_dir=str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    cached.write_bytes(cached.read_bytes()[:-100])
    msg = expect_data_error(str(cached), name="mnist", download_dir=str(tmp_path / "cache"))
    assert "download cache" in msg and "corrupt or truncated" in msg


def test_count_mismatch(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    msg = expect_data_error(str(tmp_path / "train-images-idx3-ubyte"), name="mnist", root=tmp_path)
    assert str(tmp_path / "train-labels-idx1-ubyte") in msg and "12" in msg and "11" in msg


def test_wrong_image_size(tmp_path):
    make_folder(tmp_path, size=14)
    msg = expect_data_error(str(tmp_path / "train-images-idx3-ubyte"), name="mnist", root=tmp_path)
    assert "14x14" in msg and "28x28" in msg


def test_label_out_of_range(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 10], np.uint8))
    msg = expect_data_error(str(tmp_path / "t10k-labels-idx1-ubyte"), name="mnist", root=tmp_path)
    assert "0..9" in msg


@pytest.mark.parametrize("key", ["n_train", "n_test"])
@pytest.mark.parametrize("value", [0, -3, 100_000, True, "10", 2.5])
def test_bad_subset_size(key, value):
    with pytest.raises(ConfigError) as info:
        load(name="digits", **{key: value})
    assert f"data.{key}" in str(info.value) and repr(value) in str(info.value)
    assert "1.." in str(info.value)


def test_bad_subset_size_local(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.n_train=13 .*1\.\.12"):
        load(name="mnist", root=tmp_path, n_train=13)


def test_unknown_name():
    with pytest.raises(ConfigError, match=r"data\.name='cifar'.*digits, mnist, fashion_mnist"):
        load(name="cifar")


@pytest.mark.parametrize("frac", [0, 1, 1.5, 0.001])
def test_bad_test_fraction(frac):
    with pytest.raises(ConfigError, match=r"data\.test_fraction"):
        load(name="digits", test_fraction=frac)


# ---------------------------------------------------------------- torchvision download path (no network)


@pytest.mark.parametrize("exc", [urllib.error.URLError("offline"), ConnectionError("network unreachable")])
def test_download_failure_is_data_error(tmp_path, monkeypatch, exc):
    import torchvision.datasets.mnist as tv

    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise exc

    monkeypatch.setattr(tv, "download_and_extract_archive", fail)
    msg = expect_data_error("data.root", name="fashion_mnist", root=None, download_dir=str(tmp_path), download=True)
    assert calls and "could not be downloaded" in msg and all(f in msg for f in IDX_FILES)


def test_download_disabled_and_absent(tmp_path):
    msg = expect_data_error("data.root", name="mnist", download_dir=str(tmp_path), download=False)
    assert "data.download=false" in msg


def test_download_path_uses_torchvision(tmp_path, monkeypatch):
    """A fake download that writes the extracted idx files, so torchvision's own loading is exercised offline."""
    import torchvision.datasets.mnist as tv

    arrays = make_folder(tmp_path / "src")

    def fake(url, download_root, filename, md5=None, **kwargs):
        shutil.copy(tmp_path / "src" / filename.removesuffix(".gz"), Path(download_root) / filename.removesuffix(".gz"))

    monkeypatch.setattr(tv, "download_and_extract_archive", fake)
    ds = load(name="mnist", download_dir=str(tmp_path / "cache"), n_test=4)
    assert (tmp_path / "cache" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert ds.n_train == 12 and ds.n_test == 4
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:4]).reshape(4, 784).double().T / 255
    assert torch.equal(ds.X_test, expected)


# ---------------------------------------------------------------- real data (skipped when absent)


@pytest.mark.skipif(
    not all((FASHION / f"{f}.gz").is_file() for f in IDX_FILES), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist():
    ds = load(torch.float32, name="fashion_mnist", root=str(FASHION), n_train=1000, n_test=500)
    assert ds.X_train.shape == (784, 1000) and ds.X_test.shape == (784, 500)
    assert ds.Y_train.shape == (10, 1000) and ds.n_classes == 10
    assert ds.X_train.min() >= 0 and ds.X_train.max() == 1
    assert set(ds.y_train.tolist()) == set(range(10))


@pytest.mark.skipif(
    not all((MNIST_TEST / f"{f}.gz").is_file() for f in IDX_FILES[2:]), reason="shared MNIST test set not present"
)
def test_real_mnist_test_set(tmp_path):
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        src = MNIST_TEST / f"t10k-{kind}.gz"
        shutil.copy(src, tmp_path / src.name)
        shutil.copy(src, tmp_path / f"train-{kind}.gz")
    ds = load(torch.float32, name="mnist", root=str(tmp_path))
    assert ds.n_test == 10_000 and ds.n_train == 10_000 and ds.n_features == 784
    assert int(ds.y_test[0]) == 7 and int(ds.Y_test[:, 0].argmax()) == 7
    assert ds.X_test.min() == 0 and ds.X_test.max() == 1
