"""The work a sweep does, as ``bench`` records it, and the benchmark script at tiny sizes.

The recorded FLOPs of a three-splitting sweep and of the evaluation after it are checked against
their closed forms, written out here from the block updates (docs/math.md §2), and against
``torch.utils.flop_counter.FlopCounterMode``, whose stock formulas cover ``mm`` and ``addmm``; the
in-place ``addmm_``, ``mv``, the Cholesky factorisations and the triangular solves are given to it
here with their textbook formulas. No timing is asserted.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.tolerances import tol

from bench import (
    CHOLESKY,
    PRODUCT,
    SOLVE,
    Case,
    MatrixOp,
    build_case,
    record_matrix_ops,
    replayed_ops,
    total_flops,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sweep.py"
for name in ("naive_bcd",):  # the scripts bench_sweep.py imports from its own folder
    sibling = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    assert sibling is not None and sibling.loader is not None
    if name not in sys.modules:
        sys.modules[name] = importlib.util.module_from_spec(sibling)
        sibling.loader.exec_module(sys.modules[name])
spec = importlib.util.spec_from_file_location("bench_sweep", SCRIPT)
assert spec is not None and spec.loader is not None
bench_script = importlib.util.module_from_spec(spec)
sys.modules["bench_sweep"] = bench_script
spec.loader.exec_module(bench_script)

aten = torch.ops.aten
N, N_TEST = 40, 10
# the naive implementation's columns: finite and positive in a case it applies to
NAIVE_COLUMNS = [
    "naive_seconds_per_sweep", "naive_eval_seconds", "speedup_sweep", "speedup_total", "total_ratio",
    "naive_max_rel_diff", "naive_float64_tolerance",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _solve_triangular(a_shape, b_shape, *args, left=True, **kwargs) -> int:
    return a_shape[-1] ** 2 * (b_shape[-1] if left else b_shape[-2])


PYTORCH_PLUS_TEXTBOOK = {
    aten.linalg_cholesky_ex: lambda a_shape, *args, **kwargs: a_shape[-1] ** 3 / 3,
    aten.linalg_solve_triangular: _solve_triangular,
    aten.mv: lambda a_shape, v_shape, *args, **kwargs: 2 * a_shape[0] * a_shape[1],
    aten.addmm_: lambda self_shape, a_shape, b_shape, *args, **kwargs: 2 * a_shape[0] * a_shape[1] * b_shape[1],
}


def _sweep_flops(d: int, m: int, c: int, n: int) -> float:
    """One sweep of Algorithm 2 on sizes [d, m, c] but the first: V2 and U are elementwise but for W V + b; the
    data's X X^T of the W1 block is computed in the first sweep only."""
    if c * c + 2 * c * m < m * m:  # V1 by the Woodbury form: K = gamma I + rho W W^T, c x c
        v1 = 2 * c * m * c + 2 * c * m * n + c**3 / 3 + 2 * c**2 * n + 2 * m * c * n  # W W^T, W G, K, 2 solves, W^T R
    else:  # by H = gamma I + rho W^T W, m x m
        v1 = 2 * m * c * m + m**3 / 3 + 2 * m**2 * n
    return (
        2 * m * c * n + 2 * m * c + v1  # V1: G = weight target + rho W^T U (addmm), W^T b (mv)
        + 2 * c * m * n + 2 * m * d * n  # U2, U1: W V + b
        + 2 * m * m * n + 2 * c * n * m + (m + 1) ** 3 / 3 + 2 * (m + 1) ** 2 * c  # W2: V V^T, U V^T, H, Theta H = G
        + 2 * m * n * d + (d + 1) ** 3 / 3 + 2 * (d + 1) ** 2 * m  # W1: U X^T, H, Theta H = G
    )  # fmt: skip


@pytest.mark.parametrize("sizes", [[12, 9, 3], [12, 4, 3]], ids=["Woodbury", "direct"])
def test_recorded_sweep_is_the_closed_form(sizes):
    trainer, _, _ = build_case(Case("three", sizes, N, n_test=N_TEST))
    trainer.sweep()
    with FlopCounterMode(display=False, custom_mapping=PYTORCH_PLUS_TEXTBOOK) as counter:
        ops = record_matrix_ops(trainer.sweep)
    # the same terms (whole numbers, and cubes over 3) added up in other orders: a sum of len(ops) roundings each
    rel = tol(n=len(ops) + 2)
    assert total_flops(ops) == pytest.approx(_sweep_flops(*sizes, N), rel=rel)
    assert total_flops(ops) == pytest.approx(counter.get_total_flops(), rel=rel)


def test_woodbury_or_direct_is_visible_in_the_recorded_shapes():
    """The sweep runs W2 (its (m+1) x (m+1) normal equations), then V1 behind the 3-wide output layer: the
    3 x 3 Woodbury system for a 9-wide V1 (9 + 54 < 81), the 4 x 4 system itself for a 4-wide one; then W1."""
    factorised = {}
    for m in (9, 4):
        trainer, _, _ = build_case(Case("three", [12, m, 3], N, n_test=N_TEST))
        factorised[m] = [op.m for op in record_matrix_ops(trainer.sweep) if op.kind == CHOLESKY]
    assert factorised == {9: [10, 3, 13], 4: [5, 4, 13]}
    trainer, _, _ = build_case(Case("three", [12, 9, 3], N, n_test=N_TEST))
    solves = [(op.m, op.n) for op in record_matrix_ops(trainer.sweep) if op.kind == SOLVE]
    assert solves == [(10, 3)] * 2 + [(3, N)] * 2 + [(13, 9)] * 2  # two triangles each; K R = W G: n columns


def test_evaluation_is_the_closed_form():
    """The objective's Z = W V + b per layer, its gradient in closed form (E V^T per layer, W^T E but for
    V_0 = X), the network's forward pass on the training samples (its first Z is the objective's) and on
    the test samples."""
    d, m, c = 12, 9, 3
    trainer, data, _ = build_case(Case("three", [d, m, c], N, n_test=N_TEST))
    with FlopCounterMode(display=False, custom_mapping=PYTORCH_PLUS_TEXTBOOK) as stock:
        ops = record_matrix_ops(lambda: trainer.evaluate(data))
    first, second = 2 * m * d, 2 * c * m  # per sample
    expected = first * (N + N + N_TEST) + second * (N + N + N + N_TEST) + 2 * m * c * N  # W^T E of V1
    assert total_flops(ops) == total_flops(ops, PRODUCT) == stock.get_total_flops() == expected


def test_replayed_sweep_is_the_sweep_that_runs_next():
    """Two-splitting's nonlinear blocks run as many inner iterations as their data ask: the replay is counted
    from the same state, so the sweep after it does the same work and ends where the replay ended."""
    trainer, _, _ = build_case(Case("two", [12, 9, 7, 6, 3], N, n_test=N_TEST))
    trainer.sweep()
    replayed = replayed_ops(trainer, trainer.sweep)
    before = copy.deepcopy(trainer.state_dict())
    again = replayed_ops(trainer, trainer.sweep)
    after = trainer.state_dict()
    assert all(torch.equal(a, b) for kind in before for a, b in zip(before[kind], after[kind], strict=True))
    ran = record_matrix_ops(trainer.sweep)
    assert replayed == again == ran
    smooth_parts = sum(op.kind == PRODUCT and (op.m, op.k, op.n) == (9, 12, N) for op in ran)  # W1 V0 + b1
    assert smooth_parts > 2  # the target of V1, then W1's inner solver: the start and each trial step


def test_self_products_are_flagged_with_their_minimum_work():
    """A product with the transpose of its own first operand (V @ V.T, W.T @ W, in addmm and bmm too) is flagged
    symmetric, its minimum work m^2 k half of its 2 m k m; a product of two tensors, or of a square matrix with
    itself untransposed, is not."""
    V, W, A = torch.randn(5, 7), torch.randn(4, 5), torch.randn(5, 5)
    batch = torch.randn(2, 3, 4)
    ops = record_matrix_ops(
        lambda: (V @ V.T, W.T @ W, V @ torch.randn(7, 5), V @ V.T.clone(), A @ A, torch.addmm(A, V, V.T),
                 torch.bmm(batch, batch.transpose(1, 2)))
    )  # fmt: skip
    assert [(op.m, op.k, op.n, op.symmetric) for op in ops] == [
        (5, 7, 5, True), (5, 4, 5, True), (5, 7, 5, False), (5, 7, 5, False), (5, 5, 5, False), (5, 7, 5, True),
        (3, 4, 3, True), (3, 4, 3, True),
    ]  # fmt: skip
    assert [op.minimum_flops for op in ops] == [175, 100, 350, 350, 250, 175, 36, 36]
    assert [op.flops for op in ops] == [350, 200, 350, 350, 250, 350, 72, 72]
    assert total_flops(ops, minimum=True) == 1472 and total_flops(ops) == 1994


def test_a_blockwise_gram_product_has_the_minimum_work_of_the_whole():
    """V V^T (d x n) from row blocks: the diagonal blocks as self-products, those above the diagonal as plain
    products, add up to the minimum work d^2 n of the one self-product."""
    d, n, rows = 12, 9, 4
    V = torch.randn(d, n)
    blocks = [V[i : i + rows] for i in range(0, d, rows)]
    ops = record_matrix_ops(lambda: [a @ b.T for i, a in enumerate(blocks) for b in blocks[i:]])
    assert sum(op.symmetric for op in ops) == 3
    assert total_flops(ops, minimum=True) == total_flops(record_matrix_ops(lambda: V @ V.T), minimum=True) == d * d * n
    assert MatrixOp(CHOLESKY, 6, 6, 6, symmetric=True).minimum_flops == 6**3 / 3  # only products have a half


@pytest.mark.process  # each case is measured in processes of its own
def test_main_writes_csv_and_json(tmp_path):
    """The benchmark's entry point at tiny sizes (one case, in its own processes as always)."""
    argv = ["--sizes", "20,8,3", "--n", "60", "--sweeps", "2", "--warmup", "1", "--out", str(tmp_path)]
    rows = bench_script.main(argv)
    table = pd.read_csv(tmp_path / "sweep.csv")
    report = json.loads((tmp_path / "sweep.json").read_text())
    columns = {
        "case", "scheme", "n", "seconds_per_sweep", "sweep_gflop", "sweep_gflops", "gemm_gflops", "ratio_to_gemm",
        "eval_seconds", "eval_gflop", "state_and_data_mb", "peak_sweep_mb", "peak_eval_mb", "peak_ratio",
        "process_peak_mb", "matrix_ops", "load_before", "estimate_sweep_mb", "estimate_sweep_ratio",
        "estimate_eval_mb", "estimate_eval_ratio", "estimate_eval_no_grad_mb", "gflop_cholesky",
        "sweep_min_gflop", "ratio_to_gemm_min", "seconds_per_sweep_per_1000_samples", *NAIVE_COLUMNS,
    }  # fmt: skip
    assert columns <= set(table.columns)
    assert len(table) == 1 and table["case"][0] == "three 20-8-3" and rows[0]["case"] == "three 20-8-3"
    assert (table[["seconds_per_sweep", "gemm_gflops", "ratio_to_gemm", "state_and_data_mb"]] > 0).all(axis=None)
    # a sum of one term per matrix op, in another order, over 1e9, through the CSV's decimal digits
    rel = tol(n=int(table["matrix_ops"][0]) + 3)
    assert table["sweep_gflop"][0] == pytest.approx(_sweep_flops(20, 8, 3, 60) / 1e9, rel=rel)
    assert {(r["m"], r["k"], r["n"]) for r in report["rows"][0]["gemm_rates"]} >= {(8, 20, 60), (8, 60, 8)}
    assert report["machine"]["threads"] >= 1
    assert (table[[*NAIVE_COLUMNS, "ratio_to_gemm_min"]] > 0).all(axis=None) and table["naive_check"][0] == "passed"


@pytest.mark.slow  # some 30 s on two cores
@pytest.mark.process
def test_quick_runs_one_case_with_the_naive_and_the_memory(tmp_path, capsys):
    """``--quick``: the one small case, its naive timed beside it and checked, its memory measured."""
    rows = bench_script.main(["--quick", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "sweep.csv")
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert len(rows) == 1 and list(table["case"]) == ["three 784-64x2-10"] and list(table["n"]) == [1000]
    shown = ["sweep_min_gflop", "ratio_to_gemm_min", "seconds_per_sweep_per_1000_samples", "peak_sweep_mb"]
    for values in (table.iloc[0], report["rows"][0]):
        assert all(math.isfinite(values[key]) and values[key] > 0 for key in [*NAIVE_COLUMNS, *shown])
        assert values["naive_check"] == "passed" and values["naive_check_sweeps"] == 2
        # the float64 check's block closest to its derived tolerance is within it, and the ratio is theirs
        assert 0 <= values["naive_float64_diff"] <= values["naive_float64_tolerance"]
        # a quotient of two values each read back from the CSV's decimal digits: three roundings
        assert values["naive_float64_ratio"] == pytest.approx(
            values["naive_float64_diff"] / values["naive_float64_tolerance"], rel=tol(n=3)
        )
        assert values["naive_float64_max_diff"] >= values["naive_float64_diff"]
        assert values["total_ratio"] == pytest.approx(1 / values["speedup_total"], rel=tol(n=3))
    assert values["sweep_min_gflop"] < values["sweep_gflop"]  # the W blocks' V V^T are self-products
    out = capsys.readouterr().out
    assert "0.85 of the GEMM rate on the minimum work" in out and "the naive implementation's" in out
    assert f"against its derived tolerance {values['naive_float64_tolerance']:.2e}" in out


def test_quick_refuses_a_case_of_its_own():
    with pytest.raises(SystemExit) as refused:
        bench_script.main(["--quick", "--sizes", "20,8,3"])
    assert refused.value.code == 2


@pytest.mark.process
def test_memory_only_reports_the_estimate_beside_the_peak(tmp_path, capsys):
    """``--memory-only``: one process per case measures its peaks; the table shows bcd_cli.run.memory's estimates."""
    rows = bench_script.main(
        ["--sizes", "20,8,8,3", "--n", "60", "--set", "trainer=adam", "--memory-only", "--out", str(tmp_path)]
    )
    table = pd.read_csv(tmp_path / "memory.csv")
    assert len(rows) == 1 and table["case"][0] == "adam 20-8x2-3"
    assert (table[["estimate_sweep_mb", "estimate_eval_mb", "estimate_eval_no_grad_mb"]] > 0).all(axis=None)
    assert "est/peak" in capsys.readouterr().out


def test_resnet_needs_one_hidden_width():
    with pytest.raises(SystemExit, match="--sizes: scheme resnet needs sizes"):
        bench_script.main(["--scheme", "resnet", "--sizes", "20,8,6,8,3", "--n", "60", "--memory-only"])
