"""In a real Jupyter kernel (nbclient): every image of a batch, figures without magics, a short
print, a visible progress bar, and no ipywidgets warning."""

from __future__ import annotations

import json

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to run notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to run notebooks")
pytest.importorskip("ipykernel", reason="ipykernel is needed to run notebooks")

CELLS = [
    "import netlens\nlens = netlens.load()\nres = lens.cam()\nres",
    "res.figure(3)",
    "print(res)",
    "res.show()",
    "from netlens.render.notebook_progress import NotebookProgress\n"
    "with NotebookProgress(delay=0).task('demo', 3) as advance:\n"
    "    for _ in range(3):\n"
    "        advance(1)",
    "from netlens.progress import auto_progress\ntype(auto_progress()).__name__",
    "import torch, torchvision\n"
    "torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), 'r18.pt')\n"
    "netlens.load('r18.pt', arch='resnet18')  # imports timm: no ipywidgets warning",
]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict]]:
    work = tmp_path_factory.mktemp("kernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    return [cell.outputs for cell in nb.cells]


def data_of(outs: list[dict]) -> dict:
    merged: dict = {}
    for out in outs:
        merged.update(out.get("data", {}))
    return merged


def test_the_result_cell_shows_all_five_images_as_html_and_png(outputs) -> None:  # noqa: ANN001
    data = data_of(outputs[0])
    assert data["text/html"].count('class="nl-cam"') == 5
    assert "image/png" in data and len(data["text/plain"]) < 600


def test_figure_shows_as_png_without_matplotlib_inline(outputs) -> None:  # noqa: ANN001
    assert "image/png" in data_of(outputs[1])


def test_print_is_short(outputs) -> None:  # noqa: ANN001
    text = "".join(o.get("text", "") for o in outputs[2])
    assert text.startswith("CamResult(cam)") and len(text.splitlines()) <= 5


def test_show_displays_the_card(outputs) -> None:  # noqa: ANN001
    assert data_of(outputs[3])["text/html"].count('class="nl-cam"') == 5


def test_the_progress_bar_is_visible_and_finishes(outputs) -> None:  # noqa: ANN001
    data = data_of(outputs[4])
    assert data["text/plain"].startswith("demo: 3/3 images") and "done" in data["text/plain"]


def test_jupyter_gets_the_notebook_progress_sink(outputs) -> None:  # noqa: ANN001
    assert data_of(outputs[5])["text/plain"] == "'NotebookProgress'"


def test_no_ipywidgets_warning_anywhere(outputs) -> None:  # noqa: ANN001
    assert "ipywidgets" not in json.dumps(outputs).lower()
