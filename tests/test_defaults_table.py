"""scripts/defaults_table.py: the table the initialisation default is chosen by."""

from __future__ import annotations

import json
from pathlib import Path

import defaults_table  # scripts/, on pytest's path
import pytest


def cell(out: Path, data: str, net: str, name: str, acc: float | None, status: str = "completed") -> None:
    folder = out / data / net / name
    folder.mkdir(parents=True)
    if acc is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status, "final_test_acc": acc}))


def test_the_table_marks_what_loses_to_the_best_and_what_collapsed(tmp_path: Path, capsys):
    names = list(defaults_table.CANDIDATES)
    for name, acc in zip(names, [0.92, 0.915, 0.11, 0.88], strict=True):
        cell(tmp_path, "digits", "256x2", name, acc)
    cell(tmp_path, "digits", "512x3", names[0], 0.95)
    cell(tmp_path, "digits", "512x3", names[1], 0.99, status="interrupted")  # not a result
    (tmp_path / "digits" / "512x3" / names[2]).mkdir()
    (tmp_path / "digits" / "512x3" / names[2] / "summary.json").write_text("{damaged")
    assert defaults_table.main(["--table-only", "--rows", "digits", "--networks", "256x2,512x3",
                                "--out", str(tmp_path)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| digits | 256x2 | 0.9200 | 0.9150 | **0.1100** | *0.8800* |"
    assert lines[3] == "| digits | 512x3 | 0.9500 | — | — | — |"
    import pandas as pd

    table = pd.read_csv(tmp_path / "table.csv")
    assert table.loc[0, "best"] == 0.92 and table.loc[0, "within_margin"] == ",".join(names[:2])


def test_an_unknown_candidate_or_network_is_refused_with_what_is_allowed(tmp_path: Path, capsys):
    assert defaults_table.main(["--candidates", "normal_9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--candidates: unknown normal_9" in err and "scaled_0.5" in err
    assert defaults_table.main(["--networks", "7x7", "--out", str(tmp_path)]) == 2
    assert "--networks: unknown 7x7" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing run


@pytest.mark.parametrize("row", ["mnist_cut", "fashion"])
def test_a_row_needs_its_data_folder(row: str, tmp_path: Path, capsys):
    assert defaults_table.main(["--rows", row, "--out", str(tmp_path)]) == 2
    assert f"--rows: unknown {row}" in capsys.readouterr().err
