"""The sweep benchmark (``scripts/bench_sweep.py``): its FLOP count against PyTorch's own, and a tiny run.

``torch.utils.flop_counter.FlopCounterMode`` counts what the engine actually dispatches: its
stock formulas cover ``mm`` and ``addmm`` (2 m k n); the in-place ``addmm_`` (two-splitting's
W gradient), ``mv``, the Cholesky factorisations and the triangular solves are added here with
their textbook formulas, so that every term of the benchmark's count meets an observed call.
No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bcd_cli.train import _evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sweep.py"
spec = importlib.util.spec_from_file_location("bench_sweep", SCRIPT)
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_sweep"] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)

aten = torch.ops.aten
N, N_TEST = 40, 10
CASES = {  # small enough for milliseconds; every layer width different where the scheme allows it
    "three": [12, 9, 7, 8, 2],  # V3 by the Woodbury form (2^2 + 2 * 2 * 8 < 8^2), V2 and V1 by the d x d one
    "two": [12, 9, 7, 6, 5, 3],  # three nonlinear V blocks, four nonlinear W blocks
    "resnet": [12, 8, 8, 8, 3],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cholesky(a_shape, *args, **kwargs) -> float:
    return a_shape[-1] ** 3 / 3


def _solve_triangular(a_shape, b_shape, *args, left=True, **kwargs) -> float:
    return float(a_shape[-1] ** 2 * (b_shape[-1] if left else b_shape[-2]))  # one m x m triangle, per right-hand side


def _mv(a_shape, v_shape, *args, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _addmm_(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


EXTRA = {
    aten.linalg_cholesky_ex: _cholesky,
    aten.linalg_solve_triangular: _solve_triangular,
    aten.mv: _mv,
    aten.addmm_: _addmm_,
}


def counted(fn) -> tuple[float, dict]:
    """(stock FlopCounterMode total, per-op counts with the extra formulas) of one call of ``fn``."""
    with FlopCounterMode(display=False) as stock, FlopCounterMode(display=False, custom_mapping=EXTRA) as extended:
        fn()
    return stock.get_total_flops(), {str(op): flops for op, flops in extended.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("scheme", list(CASES))
def test_sweep_count_matches_flop_counter(scheme):
    sizes = CASES[scheme]
    algorithm, _, _, _ = bench.build_case(bench.Case(scheme, sizes, N, n_test=N_TEST))
    algorithm.sweep()  # past the first sweep, as the benchmark times it
    with bench.count_inner_steps() as inner:
        stock, ops = counted(algorithm.sweep)
    terms = bench.scheme_terms(scheme, sizes, N, [tuple(c) for c in inner] or None)
    flops = {op: bench.total_flops(terms, [op]) for op in ("gemm", "gram", "matvec", "cholesky", "solve")}
    # two-splitting with ReLU: W_{N-1}, then V_i and W_i for i = N-2 .. 1 have no closed form
    assert len(inner) == (2 * (len(sizes) - 1) - 3 if scheme == "two" else 0)
    assert stock == ops.get("aten.mm", 0) + ops.get("aten.addmm", 0)  # what the stock counter covers
    products = ops.get("aten.mm", 0) + ops.get("aten.addmm", 0) + ops.get("aten.addmm_", 0)
    assert products == flops["gemm"] + flops["gram"]
    assert ops.get("aten.mv", 0) == flops["matvec"]
    assert ops.get("aten.linalg_cholesky_ex", 0) == pytest.approx(flops["cholesky"])
    assert ops.get("aten.linalg_solve_triangular", 0) == pytest.approx(flops["solve"])


@pytest.mark.parametrize("scheme", list(CASES))
def test_evaluation_count_matches_flop_counter(scheme):
    sizes = CASES[scheme]
    algorithm, loss, data, _ = bench.build_case(bench.Case(scheme, sizes, N, n_test=N_TEST))
    stock, ops = counted(lambda: _evaluate(algorithm, loss, data))
    expected = bench.total_flops(bench.evaluation_terms(sizes, N, N_TEST))
    assert stock == expected
    assert sum(ops.values()) == expected


def test_standard_counts_by_hand():
    """One layer pair worked out: 784-1024-10 three-splitting at n = 8000."""
    d, m, c, n = 784, 1024, 10, 8000
    expected = (
        2 * m * c * n + 2 * m * c  # V1: W^T U, W^T b; then Woodbury (10^2 + 2 * 10 * 1024 < 1024^2):
        + 2 * c * m * c + 2 * c * m * n + c**3 / 3 + 2 * c**2 * n + 2 * m * c * n  # W W^T, W G, chol, solves, W^T R
        + 2 * c * m * n + 2 * m * d * n  # U2, U1: W V + b
        + 2 * m * m * n + 2 * c * n * m + (m + 1) ** 3 / 3 + 2 * (m + 1) ** 2 * c  # W2
        + 2 * d * d * n + 2 * m * n * d + (d + 1) ** 3 / 3 + 2 * (d + 1) ** 2 * m  # W1
    )  # fmt: skip
    assert bench.total_flops(bench.three_splitting_terms([d, m, c], n)) == pytest.approx(expected)


def test_main_writes_csv_and_json(tmp_path):
    """The benchmark's entry point at tiny sizes (one case, in its own process as always)."""
    rows = bench.main(
        [
            "--scheme",
            "three",
            "--sizes",
            "20,8,8,3",
            "--n",
            "60",
            "--sweeps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    table = pd.read_csv(tmp_path / "sweep.csv")
    report = json.loads((tmp_path / "sweep.json").read_text())
    columns = {
        "case", "scheme", "n", "seconds_per_sweep", "sweep_gflop", "sweep_gflops", "gemm_gflops", "ratio_to_gemm",
        "eval_seconds", "eval_gflop", "state_and_data_mb", "peak_sweep_mb", "peak_eval_mb", "peak_ratio",
        "process_peak_mb", "inner_steps", "load_before", "estimate_sweep_mb", "estimate_sweep_ratio",
        "estimate_eval_mb", "estimate_eval_ratio", "estimate_eval_no_grad_mb",
    }  # fmt: skip
    assert columns <= set(table.columns)
    assert len(table) == 1 and table["case"][0] == "three 20-8x2-3"
    assert (table[["seconds_per_sweep", "sweep_gflop", "gemm_gflops", "state_and_data_mb"]] > 0).all(axis=None)
    assert report["rows"][0]["gemm_rates"] and columns <= set(report["rows"][0])
    assert report["machine"]["threads"] >= 1 and rows[0]["case"] == table["case"][0]
    expected = bench.total_flops(bench.three_splitting_terms([20, 8, 8, 3], 60)) / 1e9
    assert table["sweep_gflop"][0] == pytest.approx(expected)


def test_memory_only_reports_the_estimate_beside_the_peak(tmp_path, capsys):
    """``--memory-only``: one process per case measures its peaks; the table shows bcd_cli.memory's estimates."""
    rows = bench.main(
        ["--sizes", "20,8,8,3", "--n", "60", "--set", "trainer=adam", "--memory-only", "--out", str(tmp_path)]
    )
    table = pd.read_csv(tmp_path / "memory.csv")
    assert len(rows) == 1 and table["case"][0] == "adam 20-8x2-3"
    assert (table[["estimate_sweep_mb", "estimate_eval_mb", "estimate_eval_no_grad_mb"]] > 0).all(axis=None)
    assert "est/peak" in capsys.readouterr().out
