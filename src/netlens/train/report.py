"""What a training run shows: a rich progress bar per epoch and the per-epoch table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["confusion_table", "epoch_progress", "epoch_table", "format_row"]

COLUMNS = [
    ("epoch", "epoch", "{:d}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("train acc", "train_acc", "{:.2%}"),
    ("val loss", "val_loss", "{:.4f}"),
    ("val acc", "val_accuracy", "{:.2%}"),
    ("val F1", "val_f1", "{:.3f}"),
    ("lr", "lr", "{:.2e}"),
    ("s", "seconds", "{:.1f}"),
    ("img/s", "images_per_s", "{:.0f}"),
]


def epoch_progress(console: Console, quiet: bool) -> Progress:
    """A progress bar (batches of the current epoch); disabled with ``quiet``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )


def _cell(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def format_row(row: dict[str, Any]) -> str:
    """One epoch as a line of text."""
    return "  ".join(f"{title} {_cell(fmt, row.get(key))}" for title, key, fmt in COLUMNS)


def epoch_table(history: list[dict[str, Any]], best_epoch: int | None = None) -> Table:
    """The per-epoch table (the best epoch marked with *)."""
    table = Table(title="training", show_edge=False)
    for title, _, _ in COLUMNS:
        table.add_column(title, justify="right")
    for row in history:
        cells = [_cell(fmt, row.get(key)) for _, key, fmt in COLUMNS]
        if row["epoch"] == best_epoch:
            cells[0] += "*"
        table.add_row(*cells)
    return table


def confusion_table(cm: list[list[int]], classes: list[str]) -> Table:
    """The test confusion matrix (rows: true class, columns: predicted; diagonal in bold)."""
    table = Table(title="test confusion (rows: true, columns: predicted)", show_edge=False)
    table.add_column("")
    for c in classes:
        table.add_column(c[:8], justify="right")
    for i, row in enumerate(cm):
        cells = [
            f"[bold]{v}[/bold]" if i == j else (str(v) if v else ".") for j, v in enumerate(row)
        ]
        table.add_row(classes[i], *cells)
    return table
