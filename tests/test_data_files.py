"""Tests for data of one's own: .npz and CSV files, CIFAR-10's python batches, data.normalize, the label mapping,
the data.json record and what a resumed run does with it, and every refusal of a bad file."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bcd_cli.data.files import CIFAR_FOLDER, CIFAR_META, CIFAR_TEST, CIFAR_TRAIN
from bcd_cli.data.loaders import RECORD_FILE, Dataset, load_data
from bcd_cli.errors import ConfigError, DataError
from tests.conftest import CONF, TINY

CPU = torch.device("cpu")
ANIMALS = ("cat", "dog", "emu")


def load(dtype: torch.dtype = torch.float64, **cfg) -> Dataset:
    return load_data(cfg, dtype=dtype, device=CPU)


def blobs(n: int = 90, d: int = 6, seed: int = 0, labels=ANIMALS, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n samples of len(labels) separable classes (one bright feature each), features offset by ``shift``."""
    rng = np.random.default_rng(seed)
    y = np.array([labels[i % len(labels)] for i in range(n)])
    X = rng.normal(shift, 1.0, (n, d))
    for k, label in enumerate(labels):
        X[y == label, k % d] += 4.0
    return X, y


def write_npz(path: Path, **arrays) -> Path:
    """An .npz of ``arrays``; X and y default to ``blobs()``."""
    if "X" not in arrays and "y" not in arrays:
        arrays["X"], arrays["y"] = blobs()
    np.savez(path, **arrays)
    return path


def write_csv(path: Path, n: int = 60, seed: int = 0, labels=ANIMALS) -> Path:
    """A CSV file with four numeric feature columns a..d and a text label column ``kind``."""
    X, y = blobs(n, 4, seed, labels)
    pd.DataFrame({**{c: X[:, i] for i, c in enumerate("abcd")}, "kind": y}).to_csv(path, index=False)
    return path


def write_cifar(root: Path, per_batch: int = 20, seed: int = 0, text_keys: bool = False) -> Path:
    """A cifar-10-batches-py folder under ``root`` in CIFAR's python layout: five training batches and a test
    batch of ``per_batch`` images each (pickled dicts with bytes keys, or text keys as the real files read with
    latin1 have), and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*CIFAR_TRAIN, CIFAR_TEST):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        images = rng.integers(0, 60, (per_batch, 3072)).astype(np.uint8)
        for j, label in enumerate(labels):  # each class a bright stripe of the red plane: learnable
            images[j, 100 * label : 100 * label + 100] = 255
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images,
            b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(_keyed(entry, text_keys)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (folder / CIFAR_META).write_bytes(pickle.dumps(_keyed(meta, text_keys)))
    return folder


def _keyed(entry: dict, text: bool) -> dict:
    return {k.decode(): v for k, v in entry.items()} if text else entry


def cifar_arrays(folder: Path, names) -> tuple[np.ndarray, np.ndarray]:
    entries = [pickle.loads((folder / name).read_bytes()) for name in names]
    return np.concatenate([e[b"data"] for e in entries]), np.concatenate([e[b"labels"] for e in entries])


# ---------------------------------------------------------------- npz


def test_npz_with_its_own_test_split_and_text_labels(tmp_path):
    X, y = blobs(30, labels=("dog", "cat", "emu"))
    X_test, y_test = blobs(12, seed=1, labels=("emu", "cat"))
    path = write_npz(tmp_path / "d.npz", X=X.reshape(30, 2, 3), y=y, X_test=X_test, y_test=y_test)
    ds = load(name="npz", path=str(path), normalize="none")
    assert ds.n_classes == 3 and ds.n_features == 6 and (ds.n_train, ds.n_test) == (30, 12)
    assert torch.equal(ds.X_train, torch.from_numpy(X).T) and torch.equal(ds.X_test, torch.from_numpy(X_test).T)
    classes = ["cat", "dog", "emu"]  # sorted training labels
    assert ds.y_train.tolist() == [classes.index(label) for label in y]
    assert ds.y_test.tolist() == [classes.index(label) for label in y_test]
    assert torch.equal(ds.Y_train.argmax(0), ds.y_train) and ds.Y_test.shape == (3, 12)
    assert ds.record["classes"] == classes and ds.record["normalize"] == {"kind": "none"}
    assert ds.record["files"][0]["path"] == str(path) and len(ds.record["files"][0]["sha256"]) == 64


def test_npz_integer_labels_become_classes_in_sorted_order(tmp_path):
    X, _ = blobs(12)
    path = write_npz(tmp_path / "d.npz", X=X, y=np.array([7, -2, 40] * 4), X_test=X[:3], y_test=np.array([40, 7, 7]))
    ds = load(name="npz", path=str(path))
    assert ds.record["classes"] == [-2, 7, 40] and ds.n_classes == 3
    assert ds.y_train.tolist()[:3] == [1, 0, 2] and ds.y_test.tolist() == [2, 1, 1]


def test_npz_seeded_stratified_split(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    a = load(name="npz", path=str(path), normalize="none")
    b = load(name="npz", path=str(path), normalize="none", split_seed=0, test_fraction=0.25)
    c = load(name="npz", path=str(path), normalize="none", split_seed=1)
    assert (a.n_train, a.n_test) == (67, 23)
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    assert torch.bincount(a.y_test).tolist() in ([8, 8, 7], [8, 7, 8], [7, 8, 8])  # stratified: 30 per class
    X, _ = blobs()
    whole = {tuple(row) for row in X.round(12)}
    split = {tuple(col) for col in torch.cat([a.X_train, a.X_test], 1).T.numpy().round(12)}
    assert split == whole


def test_npz_subsets_are_the_first_n(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    full = load(name="npz", path=str(path), normalize="none")
    sub = load(name="npz", path=str(path), normalize="none", n_train=10, n_test=5)
    assert torch.equal(sub.X_train, full.X_train[:, :10]) and torch.equal(sub.y_test, full.y_test[:5])
    assert sub.n_classes == 3  # the classes of the whole training split


# ---------------------------------------------------------------- normalisation


def test_standard_statistics_come_from_the_training_split_only(tmp_path):
    X, y = blobs(60, shift=5.0)
    X_test, y_test = blobs(30, seed=1, shift=-3.0)  # a very different mean
    X[:, 5] = 2.5  # a constant feature
    path = write_npz(tmp_path / "d.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load(name="npz", path=str(path))
    mean, std = X.mean(0), X.std(0)
    mean[5], std[5] = 2.5, 1.0
    stats = ds.record["normalize"]
    assert stats["kind"] == "standard"
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-12)
    np.testing.assert_allclose(ds.X_test.numpy(), ((X_test - mean) / std).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.X_train.mean(1).numpy(), 0, atol=1e-12)
    assert torch.all(ds.X_train[5] == 0) and ds.X_test.mean() < -1  # the test split keeps its own offset


def test_unit_scales_from_the_training_min_and_max(tmp_path):
    X, y = blobs(60)
    X_test, y_test = X[:10] * 3, y[:10]
    path = write_npz(tmp_path / "d.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load(name="npz", path=str(path), normalize="unit")
    lo, hi = X.min(0), X.max(0)
    assert ds.X_train.min(1).values.tolist() == [0.0] * 6 and ds.X_train.max(1).values.tolist() == [1.0] * 6
    np.testing.assert_allclose(ds.X_test.numpy(), ((X_test - lo) / (hi - lo)).T, rtol=1e-12)
    assert ds.record["normalize"] == {"kind": "unit", "min": lo.tolist(), "max": hi.tolist()}


def test_image_data_standard_and_unit(tmp_path):
    unit = load(name="digits")
    assert unit.record["normalize"] == {"kind": "unit", "scale": 16.0} and unit.X_train.max() == 1
    standard = load(name="digits", normalize="standard")
    np.testing.assert_allclose(standard.X_train.mean(1).numpy(), 0, atol=1e-12)
    constant = (unit.X_train.max(1).values == unit.X_train.min(1).values).nonzero().flatten()
    assert len(constant) and torch.all(standard.X_train[constant] == 0)
    assert standard.n_classes == 10 and standard.record["classes"] == list(range(10))


@pytest.mark.parametrize("value", ["minmax", "", None, 1])
def test_bad_normalize(value):
    with pytest.raises(ConfigError) as info:
        load(name="digits", normalize=value)
    assert "data.normalize" in str(info.value) and all(k in str(info.value) for k in ("none", "unit", "standard"))


# ---------------------------------------------------------------- csv


def test_csv_with_a_test_file_and_chosen_features(tmp_path):
    train, test = write_csv(tmp_path / "train.csv"), write_csv(tmp_path / "test.csv", n=15, seed=1)
    ds = load(name="csv", path=str(train), target="kind", features=["d", "b"], test_path=str(test), normalize="none")
    table = pd.read_csv(train)
    assert ds.n_features == 2 and (ds.n_train, ds.n_test) == (60, 15) and ds.n_classes == 3
    assert torch.equal(ds.X_train, torch.from_numpy(table[["d", "b"]].to_numpy()).T)
    assert ds.y_train.tolist() == [sorted(ANIMALS).index(v) for v in table["kind"]]
    assert [f["path"] for f in ds.record["files"]] == [str(train), str(test)]


def test_csv_split_when_no_test_file(tmp_path):
    ds = load(name="csv", path=str(write_csv(tmp_path / "t.csv")), target="kind", test_fraction=0.5)
    assert (ds.n_train, ds.n_test, ds.n_features) == (30, 30, 4)
    np.testing.assert_allclose(ds.X_train.mean(1).numpy(), 0, atol=1e-12)


def test_csv_needs_a_target():
    with pytest.raises(ConfigError, match=r"data\.target=None"):
        load(name="csv", path=__file__, target=None)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("level", ["parent", "batches"])
def test_cifar_folder(tmp_path, level):
    folder = write_cifar(tmp_path)
    ds = load(name="cifar10", root=str(tmp_path if level == "parent" else folder), n_test=7)
    X, y = cifar_arrays(folder, CIFAR_TRAIN)
    assert ds.n_features == 3072 and (ds.n_train, ds.n_test) == (100, 7) and ds.n_classes == 10
    assert torch.equal(ds.X_train, torch.from_numpy(X).double().T / 255)
    assert ds.y_train.tolist() == y.tolist()
    assert ds.record["label_names"][0] == "airplane" and len(ds.record["files"]) == 7


def test_cifar_download_path_reads_through_torchvision(tmp_path, monkeypatch):
    """A download that copies the generated batches, checksums accepted: torchvision's own reader gives the
    same pixels, in CIFAR's channel-plane order, as the folder reader."""
    import torchvision.datasets.cifar as tv

    source = write_cifar(tmp_path / "src")

    def fake(url, download_root, filename=None, md5=None, **kwargs):
        write_cifar(Path(download_root), text_keys=True)

    monkeypatch.setattr(tv, "download_and_extract_archive", fake)
    monkeypatch.setattr(tv, "check_integrity", lambda path, md5=None: Path(path).is_file())
    ds = load(name="cifar10", download_dir=str(tmp_path / "cache"))
    X, y = cifar_arrays(source, [CIFAR_TEST])
    assert torch.equal(ds.X_test, torch.from_numpy(X).double().T / 255) and ds.y_test.tolist() == y.tolist()
    assert ds.record["files"][0]["path"] == str(tmp_path / "cache" / CIFAR_FOLDER / CIFAR_TRAIN[0])


def test_cifar_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv

    def fail(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(tv, "download_and_extract_archive", fail)
    with pytest.raises(DataError, match=r"could not be downloaded.*data\.root=DIR.*cifar-10-batches-py"):
        load(name="cifar10", download_dir=str(tmp_path))


# ---------------------------------------------------------------- refusals of bad files


def _npz_case(tmp_path: Path, case: str) -> Path:
    """A bad .npz file of kind ``case``."""
    X, y = blobs(12)
    path = tmp_path / "bad.npz"
    if case == "missing":
        return path
    if case == "not_npz":
        path.write_text("a,b\n1,2\n")
    elif case == "npy":
        np.save(tmp_path / "bad.npy", X)
        (tmp_path / "bad.npy").rename(path)
    elif case == "truncated":
        path.write_bytes(write_npz(tmp_path / "good.npz").read_bytes()[:300])
    elif case == "no_y":
        np.savez(path, X=X, labels=y)
    elif case == "object":
        with zipfile.ZipFile(path, "w") as z:  # numpy.savez refuses nothing: an object array pickled inside
            for name, array in (("X", X), ("y", np.array(list(y), dtype=object))):
                with z.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, array, allow_pickle=True)
    elif case == "nan":
        X_test = X.copy()
        X_test[[1, 4, 7], 2] = np.nan
        np.savez(path, X=X, y=y, X_test=X_test, y_test=y)
    elif case == "single_class":
        np.savez(path, X=X, y=np.full(12, 3))
    elif case == "lengths":
        np.savez(path, X=X, y=y[:11])
    elif case == "features":
        np.savez(path, X=X, y=y, X_test=X[:, :5], y_test=y)
    elif case == "empty":
        np.savez(path, X=np.zeros((0, 6)), y=np.zeros(0, dtype=np.int64))
    elif case == "half_test":
        np.savez(path, X=X, y=y, X_test=X)
    elif case == "fraction":
        np.savez(path, X=X, y=np.linspace(0, 1, 12))
    elif case == "unseen":
        np.savez(path, X=X, y=y, X_test=X[:2], y_test=np.array(["cat", "yak"]))
    return path


NPZ_CASES = {
    "missing": "does not exist",
    "not_npz": "not an .npz file",
    "npy": "single .npy array",
    "truncated": "corrupt",
    "no_y": "no array y; it holds X, labels",
    "object": "array y holds Python objects",
    "nan": "X_test holds 3 NaN or infinite values",
    "single_class": "a single class (3)",
    "lengths": "X holds 12 samples but y holds 11 labels",
    "features": "X_test has 5 features per sample but X has 6",
    "empty": "X holds no samples",
    "half_test": "holds X_test but no y_test",
    "fraction": "non-integer labels",
    "unseen": "test label 'yak' is not among the training labels ('cat', 'dog', 'emu')",
}


def assert_refused(named: Path, expected: str, **cfg) -> None:
    """Loading ``cfg`` is refused by one line naming the file ``named`` and saying ``expected``, exit status 2."""
    with pytest.raises(DataError) as info:
        load(**cfg)
    message = str(info.value)
    assert str(named) in message and expected in message and "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("case", NPZ_CASES)
def test_a_bad_npz_file_is_refused_in_one_line(tmp_path, case):
    path = _npz_case(tmp_path, case)
    assert_refused(path, NPZ_CASES[case], name="npz", path=str(path))


def _csv_case(tmp_path: Path, case: str) -> tuple[Path, dict]:
    """A bad CSV file of kind ``case`` and the data config that reads it."""
    path = write_csv(tmp_path / "bad.csv")
    cfg: dict = {"target": "kind"}
    table = pd.read_csv(path)
    if case == "target":
        cfg["target"] = "label"
    elif case == "text":
        table["b"] = table["b"].astype(object)
        table.loc[6, "b"] = "seven"
        table.to_csv(path, index=False)
    elif case == "nan":
        table.loc[[3, 9], "c"] = np.nan
        table.to_csv(path, index=False)
    elif case == "empty":
        path.write_text("")
    elif case == "header_only":
        path.write_text("a,b,kind\n")
    elif case == "single_class":
        table["kind"] = "cat"
        table.to_csv(path, index=False)
    elif case == "test_columns":
        test = tmp_path / "test.csv"
        table.drop(columns=["c"]).to_csv(test, index=False)
        cfg["test_path"], path = str(test), test
    return path, cfg


CSV_CASES = {
    "target": "no target column 'label'; its columns are a, b, c, d, kind",
    "text": "feature column 'b' is not numeric: row 7 holds 'seven'",
    "nan": "feature column 'c' holds 2 empty, NaN or infinite values (first at row 4)",
    "empty": "empty, no header line",
    "header_only": "holds no samples",
    "single_class": "a single class ('cat')",
    "test_columns": "no feature column 'c'; its columns are a, b, d, kind",
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_a_bad_csv_file_is_refused_in_one_line(tmp_path, case):
    path, cfg = _csv_case(tmp_path, case)
    assert_refused(path, CSV_CASES[case], name="csv", path=str(tmp_path / "bad.csv"), **cfg)


class _Shell:
    """Unpickling this would run ``echo``: a pickle that asks for a function."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _cifar_case(tmp_path: Path, case: str) -> Path:
    """A CIFAR folder with one bad file of kind ``case``; returns that file."""
    folder = write_cifar(tmp_path)
    path = folder / CIFAR_TRAIN[2]
    entry = pickle.loads(path.read_bytes())
    if case == "missing":
        path.unlink()
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif case == "shape":
        entry[b"data"] = entry[b"data"][:, :1024]
        path.write_bytes(pickle.dumps(entry))
    elif case == "labels":
        entry[b"labels"][3] = 10
        path.write_bytes(pickle.dumps(entry))
    elif case == "no_data":
        del entry[b"data"]
        path.write_bytes(pickle.dumps(entry))
    elif case == "code":
        entry[b"filenames"] = _Shell()
        path.write_bytes(pickle.dumps(entry))
    return path


CIFAR_CASES = {
    "missing": "missing; data.root must be a folder holding cifar-10-batches-py",
    "truncated": "not a CIFAR-10 python batch, corrupt or truncated",
    "shape": "data is uint8 of shape (20, 1024), expected uint8 N x 3072",
    "labels": "..10, expected 0..9",
    "no_data": "no data or labels in it (it holds batch_label, filenames, labels)",
    "code": "asks for posix.system",
}


@pytest.mark.parametrize("case", CIFAR_CASES)
def test_a_bad_cifar_batch_is_refused_in_one_line(tmp_path, case, capfd):
    path = _cifar_case(tmp_path, case)
    with pytest.raises(DataError) as info:
        load(name="cifar10", root=str(tmp_path))
    message = str(info.value)
    assert str(path) in message and CIFAR_CASES[case] in message and "\n" not in message
    assert "pwned" not in capfd.readouterr().out


@pytest.mark.parametrize("key", ["path", "test_path"])
def test_a_missing_path_is_named(tmp_path, key):
    cfg = {"name": "csv", "path": str(write_csv(tmp_path / "t.csv")), "target": "kind", key: str(tmp_path / "no.csv")}
    with pytest.raises(DataError, match=rf"no\.csv: does not exist \(data\.{key}\)"):
        load(**cfg)
    with pytest.raises(ConfigError, match=r"data\.path=None"):
        load(name="npz", path=None)


# ---------------------------------------------------------------- the record, runs and resumes


def test_resumed_load_uses_the_recorded_preparation(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    fresh = load_data({"name": "npz", "path": str(path)}, dtype=torch.float64, device=CPU, folder=tmp_path)
    record = fresh.record | {"normalize": fresh.record["normalize"] | {"mean": [1.0] * 6, "std": [2.0] * 6}}
    (tmp_path / RECORD_FILE).write_text(json.dumps(record | {"classes": ["emu", "dog", "cat"]}))
    resumed = load_data(
        {"name": "npz", "path": str(path)}, dtype=torch.float64, device=CPU, folder=tmp_path, resumed=True
    )
    X, y = blobs()
    assert torch.allclose(torch.cat([resumed.X_train, resumed.X_test], 1).sum(1), torch.from_numpy((X - 1) / 2).sum(0))
    assert resumed.y_train.tolist() == [2 - v for v in fresh.y_train.tolist()]  # the recorded order of the classes
    (tmp_path / RECORD_FILE).unlink()  # a run folder older than the record: prepared again, as it was
    again = load_data(
        {"name": "npz", "path": str(path)}, dtype=torch.float64, device=CPU, folder=tmp_path, resumed=True
    )
    assert torch.equal(again.X_train, fresh.X_train)


def test_npz_run_records_its_data_and_resumes(tmp_path, bcd_train):
    X, y = blobs(240)  # debug=fast trains on the first 120 of 180 training samples, tests on 60
    write_npz(tmp_path / "d.npz", X=X, y=y)
    code, stderr = bcd_train("data=npz", "data.path=d.npz", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, stderr
    run = tmp_path / "run"
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.data.path == str(tmp_path / "d.npz")  # recorded absolute
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["classes"] == list(ANIMALS) and record["normalize"]["kind"] == "standard"
    assert record["n_train"] == 120 and len(record["normalize"]["mean"]) == 6
    code, stderr = bcd_train("resume=run", "epochs=3", cwd=tmp_path)
    assert code == 0, stderr
    assert pd.read_csv(run / "metrics.csv")["sweep"].tolist() == [0, 1, 2, 3]
    assert json.loads((run / RECORD_FILE).read_text()) == record

    write_npz(tmp_path / "d.npz", X=X + 1e-9, y=y)  # the file changed after the run started
    code, stderr = bcd_train("resume=run", "epochs=4", cwd=tmp_path)
    assert code == 2 and str(tmp_path / "d.npz") in stderr and "changed since the run" in stderr
    assert pd.read_csv(run / "metrics.csv")["sweep"].tolist() == [0, 1, 2, 3]


def test_csv_run(tmp_path, bcd_train):
    write_csv(tmp_path / "t.csv", n=240)
    code, stderr = bcd_train(
        "data=csv", "data.path=t.csv", "data.target=kind", *TINY, "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 0, stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_train"] == 120
    assert json.loads((tmp_path / "run" / RECORD_FILE).read_text())["classes"] == list(ANIMALS)


def test_cifar_run(tmp_path, bcd_train):
    """A run on a CIFAR-10 folder (SGD: the 3073 x 3073 products of BCD's first layer are test_config's)."""
    write_cifar(tmp_path / "images", per_batch=60)
    code, stderr = bcd_train(
        "data=cifar10", "data.root=images", *TINY, "trainer=sgd", "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 0, stderr
    record = json.loads((tmp_path / "run" / RECORD_FILE).read_text())
    assert record["n_features"] == 3072 and record["normalize"] == {"kind": "unit", "scale": 255.0}


def test_every_data_yaml_documents_normalize():
    for path in sorted((CONF / "data").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert path.read_text().startswith("# ") and "bcd-train data=" in path.read_text().splitlines()[0]
        expected = "unit" if cfg.name in ("digits", "mnist", "fashion_mnist", "cifar10") else "standard"
        assert cfg.normalize == expected, path.name


def test_a_run_folder_without_a_record_resumes_and_refuses_other_data(tmp_path, bcd_train):
    """A folder from before data.json prepares the data again; a file of another shape meets the checkpoint's
    data shape."""
    X, y = blobs(240)
    write_npz(tmp_path / "d.npz", X=X, y=y)
    assert bcd_train("data=npz", "data.path=d.npz", *TINY, "hydra.run.dir=run", cwd=tmp_path)[0] == 0
    (tmp_path / "run" / RECORD_FILE).unlink()
    code, stderr = bcd_train("resume=run", "epochs=3", cwd=tmp_path)
    assert code == 0, stderr
    assert (tmp_path / "run" / RECORD_FILE).is_file()
    (tmp_path / "run" / RECORD_FILE).unlink()
    write_npz(tmp_path / "d.npz", X=np.hstack([X, X[:, :1]]), y=y)
    code, stderr = bcd_train("resume=run", "epochs=4", cwd=tmp_path)
    assert code == 2 and "written for data of 6 features" in stderr and "now loads as 7 features" in stderr


@pytest.mark.parametrize("features", ["a", [], ["a", "kind"], [1, 2]])
def test_bad_features_list(tmp_path, features):
    with pytest.raises(ConfigError) as info:
        load(name="csv", path=str(write_csv(tmp_path / "t.csv")), target="kind", features=features)
    assert str(info.value).startswith("data.features=")
