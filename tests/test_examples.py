"""Every example runs: notebooks executed with nbclient (CPU), scripts as a user runs them.

Notebooks are stored without outputs; executed here in a temporary folder, each within its
time budget (the per-cell timeout), they must show pictures or HTML and never an "ipywidgets"
warning. The quick start must show every image of its 5-image CAM batch, a short repr, a
figure without magics and, for its long call, a progress bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to run notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to run notebooks")
pytest.importorskip("ipykernel", reason="ipykernel is needed to run notebooks")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
BUDGET_S = 300  # per cell; each notebook runs in well under a minute on one core
FASHION = Path("/usr/share/datasets/fashion-mnist")
# Small-op workloads: one torch thread is as fast and does not stall a busy machine (chosen,
# not inherited; the tests' own thread count is what the 1- and 2-thread runs vary).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def needs(path: Path) -> list:
    """Marks for what a notebook needs beyond netlens (skipped with the reason otherwise)."""
    text = path.read_text()
    if "fashion-mnist" in text and not FASHION.is_dir():
        return [
            pytest.mark.skip(reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
        ]
    return []


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Run a notebook once (in its own temporary folder); its cells and wall time."""
    cache: dict[Path, tuple[list, float]] = {}

    def run(path: Path) -> tuple[list, float]:
        if path not in cache:
            nb = nbformat.read(path, as_version=4)
            work = tmp_path_factory.mktemp(path.stem)
            client = nbclient.NotebookClient(
                nb, timeout=BUDGET_S, kernel_name="python3",
                resources={"metadata": {"path": str(work)}},
            )  # fmt: skip
            start = time.perf_counter()
            client.execute(env=ENV)
            cache[path] = (nb.cells, time.perf_counter() - start)
            print(f"\n{path.name}: executed in {cache[path][1]:.1f} s")
        return cache[path]

    return run


def code_cells(cells: list) -> list:
    return [c for c in cells if c.cell_type == "code"]


def mime(cell) -> dict:  # noqa: ANN001
    data: dict = {}
    for out in cell.outputs:
        data.update(out.get("data", {}))
    return data


def is_bar(data: dict) -> bool:
    """A notebook progress bar's output (as NotebookProgress draws it)."""
    return "<progress" in data.get("text/html", "") or " · done" in data.get("text/plain", "")


def seconds(cell) -> float:  # noqa: ANN001
    run = cell.metadata.get("execution", {})
    a, b = run.get("iopub.execute_input"), run.get("shell.execute_reply")
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def test_there_are_examples() -> None:
    assert len(NOTEBOOKS) >= 6 and len(list(EXAMPLES.glob("*.py"))) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in code_cells(nb.cells):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert "execution" not in cell.metadata
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=needs(p)) for p in NOTEBOOKS])
def test_notebook_runs_and_shows_pictures_without_ipywidgets(path: Path, executed) -> None:  # noqa: ANN001
    cells, _ = executed(path)
    outputs = [out for c in code_cells(cells) for out in c.outputs]
    assert any({"image/png", "text/html"} & set(out.get("data", {})) for out in outputs)
    assert "ipywidgets" not in json.dumps(outputs).lower()
    assert not [o for o in outputs if o.output_type == "error"]


def test_quick_start_shows_the_batch_a_short_repr_a_figure_and_progress(executed) -> None:  # noqa: ANN001
    cells, _ = executed(EXAMPLES / "01_quick_start.ipynb")
    by_source = {c.source.strip(): c for c in code_cells(cells)}
    batch = mime(by_source["res = lens.cam()\nres"])
    assert batch["text/html"].count('class="nl-cam"') == 5 and "image/png" in batch
    printed = "".join(o.get("text", "") for o in next(
        c for s, c in by_source.items() if s.startswith("print(res)")).outputs)  # fmt: skip
    assert printed.startswith("CamResult(cam)") and len(printed.splitlines()) <= 6
    assert "image/png" in mime(by_source["res.figure(3)"])
    long_call = next(c for s, c in by_source.items() if "lens.evaluate(" in s)
    bars = [o["data"] for o in long_call.outputs if is_bar(o.get("data", {}))]
    if seconds(long_call) > 5:  # the bar appears for tasks over 2 s (plus the set-up)
        assert bars and "done" in bars[-1]["text/plain"]


SCRIPTS = [
    ("quick_start.py", []),
    ("cats_vs_dogs_alexnet.py", []),
    pytest.param(
        "ablation_study.py",
        ["--limit", "200"],
        marks=[] if FASHION.is_dir() else [pytest.mark.skip(reason="Fashion-MNIST missing")],
    ),
]


@pytest.mark.parametrize(("script", "args"), SCRIPTS)
def test_scripts_run(script: str, args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=BUDGET_S, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout or "median accuracy" in proc.stdout
    assert any((tmp_path / "out").rglob("*.png"))
