"""Terminal output of a run: a live progress bar in a terminal (plain lines otherwise) and the summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class SweepProgress:
    """A live bar with the objective and accuracies of the latest sweep."""

    def __init__(self, console: Console, description: str = "BCD") -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.description = description
        self.task: Any = None

    def start(self, total: int) -> None:
        self.task = self.bar.add_task(self.description, total=total, info="")
        self.bar.start()

    def update(self, row: dict[str, Any]) -> None:
        info = f"L={row['objective']:.4g}  train {row['train_acc']:.3f}  test {row['test_acc']:.3f}"
        self.bar.update(self.task, completed=row["sweep"], info=info)

    def stop(self) -> None:
        self.bar.stop()


class PlainProgress:
    """One line per sweep, for output that is not a terminal (logs, pipes) and for multiruns (no interleaved bars)."""

    def __init__(self, console: Console, description: str = "BCD") -> None:
        self.console, self.description, self.total = console, description, 0

    def start(self, total: int) -> None:
        self.total = total

    def update(self, row: dict[str, Any]) -> None:
        self.console.print(
            f"{self.description} sweep {row['sweep']}/{self.total}  L={row['objective']:.6g}  "
            f"train {row['train_acc']:.4f}  test {row['test_acc']:.4f}  ({row['seconds']:.2f} s)",
            highlight=False,
            soft_wrap=True,
        )

    def stop(self) -> None:
        pass


def progress_display(console: Console, description: str, *, live: bool) -> SweepProgress | PlainProgress:
    """A live bar when ``live`` and the console is a terminal, else plain lines."""
    if live and console.is_terminal:
        return SweepProgress(console, description)
    return PlainProgress(console, description)


def summary_table(summary: dict[str, Any], out_dir: str) -> Table:
    """The run's headline figures as a two-column table."""
    table = Table(title="bcd-train", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("final test accuracy", f"{summary['final_test_acc']:.4f}")
    table.add_row("best test accuracy", f"{summary['best_test_acc']:.4f} (sweep {summary['best_sweep']})")
    table.add_row("final train accuracy", f"{summary['final_train_acc']:.4f}")
    table.add_row("final objective", f"{summary['final_objective']:.6g}")
    table.add_row("descent at every sweep", "yes" if summary["descent_held"] else "no")
    if summary.get("inner_capped_solves"):  # blocks left short of trainer.inner_tol: said, never hidden
        table.add_row("inner solves at their cap", f"{summary['inner_capped_solves']} (raise trainer.inner_iters)")
    table.add_row("sweeps", str(summary["sweeps"]))
    table.add_row("time", f"{summary['train_seconds']:.2f} s in sweeps, {summary['wall_seconds']:.2f} s in all")
    table.add_row("network", f"{'-'.join(map(str, summary['sizes']))} ({summary['parameters']:,} parameters)")
    table.add_row("device", summary["device"])
    table.add_row("outputs", out_dir)
    return table
