"""The table the initialisation default is chosen by: every candidate on every shipped data set and network size.

    python scripts/defaults_table.py --mnist-cut outputs/mnist_cut --fashion /usr/share/datasets/fashion-mnist
    python scripts/defaults_table.py ... --rows digits,mnist_cut --networks 256x2,600x10 --epochs 20
    python scripts/defaults_table.py --table-only      # the markdown table of the runs already done

Each cell is one ``bcd-train`` run (three-splitting BCD with every other option at its default, ``epochs``
sweeps, ``grad_norm=false``, its final checkpoint deleted) in ``OUT/ROW/NETWORK/CANDIDATE``; a cell whose
folder already holds a completed summary.json is not run again, so a stopped table goes on where it stopped.
The table (``OUT/table.csv`` and the markdown printed) gives each cell's final test accuracy after the last
sweep, the best candidate of each row, and marks a candidate more than ``--margin`` below the best of its
row, or one that collapsed (final test accuracy below ``COLLAPSE``: no better than a few classes' guess).

The MNIST row reads MNIST's test set cut into 8000 training and 2000 test images as idx files
(``python scripts/mnist_test_cut.py MNIST_TEST_FOLDER --idx outputs/mnist_cut``), since MNIST's training set
may not be at hand; the Fashion-MNIST rows read the four idx files of ``--fashion``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

CANDIDATES = {  # name -> the overrides of model.* that draw it
    "scaled_0.5": ["model.init=scaled", "model.init_scale=0.5"],
    "normal_0.01": ["model.init=normal", "model.init_std=0.01"],
    "normal_0.1": ["model.init=normal", "model.init_std=0.1"],
    "scaled": ["model.init=scaled", "model.init_scale=1.0"],
}
NETWORKS = {"256x2": [256] * 2, "512x3": [512] * 3, "1024x3": [1024] * 3, "600x10": [600] * 10}
COLLAPSE = 0.5


def rows(mnist_cut: Path | None, fashion: Path | None) -> dict[str, list[str]]:
    """The data rows the folders given allow: name -> the data overrides."""
    found = {"digits": ["data=digits"]}
    if mnist_cut is not None:
        found["mnist_cut"] = ["data=mnist", f"data.root={mnist_cut}"]
    if fashion is not None:
        found["fashion_10k"] = ["data=fashion_mnist", f"data.root={fashion}", "data.n_train=10000", "data.n_test=2000"]
        found["fashion"] = ["data=fashion_mnist", f"data.root={fashion}"]
    return found


def completed(folder: Path) -> dict | None:
    """The summary of a completed run in ``folder``, else None (a damaged or partial file counts as not done)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def run_cell(folder: Path, overrides: list[str], bcd_train: str) -> dict | None:
    """One cell: ``bcd-train`` with ``overrides`` into ``folder``, unless it is done already."""
    done = completed(folder)
    if done is not None:
        return done
    command = [bcd_train, *overrides, "checkpoint.every=0", f"hydra.run.dir={folder}"]
    print("+", " ".join(command), flush=True)
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        print(f"  failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}", flush=True)
    (folder / "checkpoint.pt").unlink(missing_ok=True)  # the table needs the metrics only: the state can be GBs
    return completed(folder)


def table(out: Path, data_rows: list[str], networks: list[str], candidates: list[str], margin: float) -> pd.DataFrame:
    """One row per (data, network): each candidate's final test accuracy (NaN where not run), the best of them."""
    records = []
    for data in data_rows:
        for net in networks:
            record: dict = {"data": data, "network": net}
            for name in candidates:
                summary = completed(out / data / net / name)
                record[name] = summary["final_test_acc"] if summary else float("nan")
            records.append(record)
    frame = pd.DataFrame(records)
    accs = frame[candidates]
    frame["best"] = accs.max(axis=1)
    frame["within_margin"] = accs.apply(lambda col: ",".join(c for c in candidates if col[c] >= col.max() - margin),
                                        axis=1)  # fmt: skip
    return frame


def markdown(frame: pd.DataFrame, candidates: list[str], margin: float) -> str:
    """The table as markdown: a cell more than ``margin`` below its row's best in italics, a collapse in bold."""
    lines = ["| data | network | " + " | ".join(candidates) + " |", "|---|---|" + "---|" * len(candidates)]
    for _, row in frame.iterrows():
        cells = []
        for name in candidates:
            value = row[name]
            if pd.isna(value):
                cells.append("—")
            elif value < COLLAPSE:
                cells.append(f"**{value:.4f}**")
            elif value < row["best"] - margin:
                cells.append(f"*{value:.4f}*")
            else:
                cells.append(f"{value:.4f}")
        lines.append(f"| {row['data']} | {row['network']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-cut", type=Path, help="a folder of idx files (scripts/mnist_test_cut.py --idx)")
    parser.add_argument("--fashion", type=Path, help="a folder holding Fashion-MNIST's four idx files")
    parser.add_argument("--rows", help="comma-separated data rows (default: every row the folders allow)")
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated, of {', '.join(NETWORKS)}")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"of {', '.join(CANDIDATES)}")
    parser.add_argument("--epochs", type=int, default=20, help="sweeps of every run (20)")
    parser.add_argument("--margin", type=float, default=0.01, help="test accuracy a default may lose to the best")
    parser.add_argument("--out", type=Path, default=Path("outputs/defaults"), help="the runs' folder")
    parser.add_argument("--table-only", action="store_true", help="no runs: the table of those done")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    args = parser.parse_args(argv)
    available = rows(args.mnist_cut, args.fashion)
    data_rows = args.rows.split(",") if args.rows else list(available)
    networks, candidates = args.networks.split(","), args.candidates.split(",")
    for name, allowed, where in ((data_rows, available, "--rows"), (networks, NETWORKS, "--networks"),
                                 (candidates, CANDIDATES, "--candidates")):  # fmt: skip
        unknown = [x for x in name if x not in allowed and not (where == "--rows" and args.table_only)]
        if unknown:
            print(f"defaults_table: {where}: unknown {', '.join(unknown)}; allowed: {', '.join(allowed)}",
                  file=sys.stderr)  # fmt: skip
            return 2
    bcd_train = str(Path(sys.executable).with_name("bcd-train"))
    if not args.table_only:
        for data in data_rows:
            for net in networks:
                widths = "[" + ",".join(map(str, NETWORKS[net])) + "]"
                for name in candidates:
                    overrides = [*available[data], f"model.widths={widths}", *CANDIDATES[name],
                                 f"epochs={args.epochs}", "grad_norm=false", *args.extra]  # fmt: skip
                    run_cell(args.out / data / net / name, overrides, bcd_train)
    frame = table(args.out, data_rows, networks, candidates, args.margin)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "table.csv", index=False)
    print(markdown(frame, candidates, args.margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
