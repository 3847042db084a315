"""The ablation analyzer on the template: it computes; progress, rows and files are the edges'."""

from __future__ import annotations

import ast
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_ablation_study import _data, _model

import netlens
from netlens.analyzers import ablation
from netlens.analyzers.ablation.study import ROWS_NAME
from netlens.analyzers.options import OptionError
from netlens.storage import MemoryStorage

PACKAGE = Path(ablation.__file__).parent
_WRITES = {"open", "print", "write_text", "write_bytes", "mkdir", "unlink", "savefig", "touch"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_import_no_rich_and_write_no_files(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "rich" for a in node.names), path
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "rich", path
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
            assert name not in _WRITES, (path.name, node.lineno, name)


class Recorder:
    """A progress sink that keeps what it was told."""

    def __init__(self) -> None:
        self.tasks: list[list] = []
        self.notes: list[str] = []

    @contextmanager
    def task(self, label, total=None, unit="images"):
        record = [label, total, 0]
        self.tasks.append(record)

        def advance(n: int) -> None:
            record[2] += n

        yield advance

    def note(self, text: str) -> None:
        self.notes.append(text)


class CountingStorage(MemoryStorage):
    """Memory rows, remembering the names, settings and columns asked for."""

    def rows(self, name, config, columns, parse):
        self.asked = (name, config, list(columns))
        self.store = super().rows(name, config, columns, parse)
        return self.store


def test_progress_and_rows_go_through_the_run(tmp_path, monkeypatch) -> None:
    model, data = _model(), _data(24)
    monkeypatch.chdir(tmp_path)
    progress, storage = Recorder(), CountingStorage()
    res = netlens.ablate(
        model, data, mode="mean", batch_size=10, progress=progress, storage=storage, resamples=50
    )
    assert [t[0] for t in progress.tasks] == ["statistics", "blocks"]
    assert all(t[1] == t[2] for t in progress.tasks)  # every task reached its total
    assert progress.tasks[1][1] == 4 * 24  # 4 blocks × 24 images
    name, config, columns = storage.asked
    assert name == ROWS_NAME and config["mode"] == "mean" and config["metric"] == "accuracy"
    assert "drop" in columns and "ci_low" in columns and "increase" not in columns
    assert list(storage.store.rows) == ["baseline", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert res.table == list(storage.store.rows.values())
    assert list(tmp_path.iterdir()) == []  # nothing written without out=


def test_rows_already_stored_are_not_run_again() -> None:
    model, data = _model(), _data(24)
    full = netlens.ablate(model, data, batch_size=12, resamples=50)
    storage = CountingStorage()
    store = storage.rows("x", {}, [], lambda k, v: v)
    for row in full.table[:3]:  # the baseline and two blocks are done
        store.add(dict(row))
    calls = []
    handle = model.fc.register_forward_hook(lambda m, i, o: calls.append(len(o)))

    class Prefilled(CountingStorage):
        def rows(self, *args):
            return store

    again = netlens.ablate(model, data, batch_size=12, resamples=50, storage=Prefilled())
    handle.remove()
    assert again.meta["resumed"] == 3 and again.table == full.table
    # (one-image passes: the survey) the class count on two images, graph check 2 × 8,
    # baseline prefix 2 batches, then the 2 blocks left × 2 batches: the 2 stored blocks are
    # not run again
    assert [c for c in calls if c > 1] == [2, 8, 8, 12, 12, 12, 12, 12, 12]


def test_options_declared_once_and_cli_in_step() -> None:
    from netlens.analyzers.ablation.modes import MODES
    from netlens.analyzers.ablation.scoring import METRICS
    from netlens.analyzers.specs import ABLATION_METRICS, ABLATION_MODES

    model, data = _model(), _data(8)
    with pytest.raises(OptionError, match="no option 'channel'.*channels"):
        netlens.Lens(model).run("ablate", data, channel=True)
    # the torch-free declarations the CLI is made from name what the study implements
    assert ABLATION_METRICS == tuple(METRICS) and ABLATION_MODES == MODES
    assert ROWS_NAME == "ablation"
