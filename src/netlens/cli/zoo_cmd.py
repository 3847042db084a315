"""``netlens zoo list|info NAME``: the bundled reference models."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors, emit_json
from .options import JsonOpt

app = typer.Typer(
    help="The bundled reference models (use them as zoo:NAME).",
    no_args_is_help=True,
    add_completion=False,
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


@app.command("list")
@cli_errors
def list_cmd(json: JsonOpt = False) -> None:
    """List the bundled models: architecture, data, classes, test accuracy, size."""
    from rich.table import Table

    from ..models import zoo
    from .runner import out as console

    rows = zoo.list_models()
    if json:
        emit_json({"default": zoo.DEFAULT, "models": rows})
        return
    if not rows:
        console.print("no zoo models installed")
        return
    table = Table(title="netlens zoo (use as zoo:NAME)", caption="* the default model")
    for col in ("name", "arch", "data", "classes", "test acc", "MB"):
        right = col in ("classes", "test acc", "MB")
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        name = r["name"] + ("*" if r["default"] else "")
        acc = _pct(r["test_accuracy"])
        size = f"{r['size_mb']:.2f}"
        table.add_row(name, r["arch"], r["data"], str(r["classes"]), acc, size)
    console.print(table)


@app.command("info")
@cli_errors
def info_cmd(
    name: Annotated[str, typer.Argument(help="Zoo model name (see `netlens zoo list`).")],
    json: JsonOpt = False,
) -> None:
    """Show a model card: data, exact training command, epochs, test metrics, device, time."""
    from ..models import zoo
    from .runner import out as console

    card = zoo.info(name.removeprefix("zoo:"))
    if json:
        emit_json(card)
        return
    test = card.get("test") or {}
    lines = [
        f"[bold]{card['name']}[/bold]{' (default)' if card['default'] else ''}: "
        f"{card.get('description', '')}",
        f"arch        {card['arch']} {card.get('arch_kwargs', {})}",
        f"classes     {', '.join(card.get('classes') or [])}",
        f"input       {card['preprocess'].get('channels')}×"
        f"{'×'.join(map(str, card['preprocess'].get('size', [])))}",
        f"data        {card.get('data')}",
        f"command     {card.get('command')}",
        f"epochs      {card.get('epochs')} (best {card.get('best_epoch')})",
        f"test        accuracy {_pct(test.get('accuracy'))}, macro F1 "
        f"{test.get('f1', float('nan')):.3f} on {test.get('n')} images "
        f"(target {_pct(card.get('target_accuracy'))})",
        f"device      {card.get('device')} ({card.get('hardware_note', '')})",
        f"wall time   {card.get('wall_time_s')} s, {card.get('images_per_s')} images/s",
        f"weights     {card['path']}/model.safetensors ({card['size_mb']:.2f} MB)",
        f"samples     {len(card['samples'])} images, {len(card['masks'])} masks",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)
