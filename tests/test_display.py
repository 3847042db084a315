"""Rich display of Results: HTML cards with every image (paged), one PNG, short text, figures."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from IPython.core.formatters import DisplayFormatter

import netlens
from netlens.analyzers.base import Result
from netlens.analyzers.cam_result import CamResult
from netlens.errors import NetlensError
from netlens.render import display
from netlens.render.cam_figure import cam_figure
from netlens.report.templating import pct

CLASSES = [f"class-{i}" for i in range(9)] + ["<b>odd</b> & name"]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Five real photos (scikit-image) of different sizes."""
    return [
        skimage.data.chelsea(),
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.chelsea()[::2, ::2],
    ]


@pytest.fixture(scope="module")
def lens(resnet18):  # noqa: ANN001
    return netlens.Lens(resnet18, netlens.Preprocess(size=(96, 96)), classes=CLASSES)


@pytest.fixture(scope="module")
def cam5(lens, photos) -> CamResult:  # noqa: ANN001
    return lens.cam(photos, top=2)


def uris(html: str) -> list[bytes]:
    """Every embedded image, decoded from its data URI."""
    return [base64.b64decode(u) for u in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def decodes(png: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) is not None


def test_repr_is_a_few_lines_of_shapes_not_contents(cam5, lens) -> None:  # noqa: ANN001
    for result in (cam5, lens.kernels()):
        text = repr(result)
        assert text == str(result) and len(text.splitlines()) <= 5 and len(text) < 600
        assert "array(" not in text and "[[" not in text
        assert type(result).__name__ in text.splitlines()[0]
    assert "heatmaps float32[5×2×96×96]" in repr(cam5)
    assert "targets top 2 classes" in repr(cam5)


def test_lens_repr_counts_the_heads_classes_without_names() -> None:
    """A state_dict model with no class names still has a known head: its width, not "?"."""
    from torch import nn

    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert ", 3 classes," in repr(netlens.load(head.eval(), size=16))
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # no head: nothing to count
    assert ", ? classes," in repr(netlens.load(pooled.eval(), size=16))


def test_dataclass_subclasses_keep_the_short_repr_unless_they_define_one() -> None:
    @dataclass(frozen=True)
    class Plain(Result):
        pass

    @dataclass(frozen=True)
    class Own(Result):
        def __repr__(self) -> str:
            return "own"

    big = {"x": np.zeros((300, 300))}
    assert repr(Plain("p", arrays=big)).startswith("Plain(p)") and len(repr(Plain("p", big))) < 400
    assert repr(Own("o", arrays=big)) == "own"


def test_html_shows_every_image_of_the_batch_with_its_probability(cam5) -> None:  # noqa: ANN001
    html = cam5._repr_html_()
    assert html.count('class="nl-cam"') == 5
    images = uris(html)
    assert len(images) == 1 + 5 * 3  # the colour legend, then image + 2 overlays per photo
    assert all(decodes(p) for p in images)
    for i in range(5):
        for c in cam5.targets[i]:
            assert f"p = {pct(float(cam5.probs[i, c]))}" in html
    assert "each map is scaled from its own minimum to its own maximum" in html
    assert "5 images" in html
    assert "<b>odd</b>" not in html  # names from the model are escaped


def test_a_weak_class_is_marked_next_to_its_map(photos) -> None:  # noqa: ANN001
    probs = np.array([[0.993, 0.007]], np.float32)
    res = CamResult(
        "cam",
        arrays={
            "heatmaps": np.random.default_rng(0).random((1, 2, 8, 8), np.float32),
            "probs": probs,
            "targets": np.array([[0, 1]]),
        },
        meta={
            "method": "gradcam",
            "layers": ["x"],
            "images": ["cat"],
            "classes": ["cat", "dog"],
            "top": 2,
            "explicit_target": False,
            "from_tensor": [True],
        },
        originals=[photos[0][:64, :64]],
    )
    html = res._repr_html_()
    assert "p = 0.7 % (weak)" in html and "p = 99.3 %" in html and "99.3 % (weak)" not in html
    fig = res.figure(0)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "p = 0.7% — weak class" in texts and "p = 99.3%" in texts
    assert "1 image<" in html


def test_pages_beyond_twelve_images_say_how_many(lens) -> None:  # noqa: ANN001
    x = lens.preprocess([skimage.data.coffee()] * 14)
    res = lens.cam(x)
    first = res._repr_html_()
    assert first.count('class="nl-cam"') == 12
    assert "showing images 1–12 of 14; res.show(page=2)" in first
    second = display.result_html(res, page=2)
    assert second.count('class="nl-cam"') == 2 and "images 13–14 of 14" in second
    with pytest.raises(NetlensError, match="page 3 does not exist: 14 items make 2 page"):
        display.result_html(res, page=3)


def test_png_holds_every_image_of_the_page(cam5) -> None:  # noqa: ANN001
    png = cam5._repr_png_()
    assert png.startswith(b"\x89PNG")
    small = display.result_png(cam5, per_page=2)
    h5 = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape[0]
    h2 = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape[0]
    assert h5 > 2 * h2  # five rows against two


def test_jupyter_formatter_gets_html_png_and_short_text(cam5, lens) -> None:  # noqa: ANN001
    fmt = DisplayFormatter()
    for result in (cam5, lens.kernels()):
        data, _ = fmt.format(result)
        assert {"text/plain", "text/html", "image/png"} <= set(data)
        assert len(data["text/plain"]) < 600


def test_figure_displays_inline_without_magics(cam5, lens) -> None:  # noqa: ANN001
    fmt = DisplayFormatter()
    for fig in (cam5.figure(3), lens.kernels().figure(0), cam5.figure(-1)):
        data, _ = fmt.format(fig)
        assert data["image/png"].startswith(b"\x89PNG")
    with pytest.raises(NetlensError, match="image 5 does not exist: this result has 5 image"):
        cam5.figure(5)
    with pytest.raises(NetlensError, match="figure 1 does not exist: this kernels result has 1"):
        lens.kernels().figure(1)


def test_generic_results_show_their_figures_and_table(lens) -> None:  # noqa: ANN001
    res = lens.kernels("conv1", max_filters=16)
    html = res._repr_html_()
    assert len(uris(html)) == 1 and all(decodes(p) for p in uris(html))
    assert '<table class="nl-table">' in html
    assert html.count("<tr>") == 1 + display.TABLE_ROWS  # header + the first rows
    assert "… and 44 more rows (64 in all: res.table)" in html
    assert "16 of 64 filters drawn (max_filters)" in html


def test_a_result_without_figures_or_table_still_renders() -> None:
    res = Result("empty", meta={"model": "m"})
    html = res._repr_html_()
    assert "Result(empty)" in html and "<b>model</b> m" in html
    assert res._repr_png_() is None


def test_show_outside_jupyter_writes_to_netlens_out_and_names_the_files(
    lens,
    tmp_path: Path,
    monkeypatch,
    capsys,  # noqa: ANN001
) -> None:
    import tempfile

    # the old show() made /tmp/netlens-<result name>-*; other processes may make other folders
    before = set(Path(tempfile.gettempdir()).glob("netlens-kernels-*"))
    monkeypatch.chdir(tmp_path)
    res = lens.kernels()
    paths = res.show()
    out = capsys.readouterr().out
    assert all(p.parent == Path("netlens-out") and p.exists() for p in paths)
    assert "wrote" in out and "netlens-out/kernels-conv1.png" in out
    assert set(Path(tempfile.gettempdir()).glob("netlens-kernels-*")) == before
    chosen = res.show(out=tmp_path / "mine")
    assert all(p.parent == tmp_path / "mine" for p in chosen)


def test_cam_figure_states_the_scale_without_adding_axes() -> None:
    img = np.zeros((40, 50, 3), np.uint8)
    fig = cam_figure(
        img, [img, img], ["a", "b"], ["a", "b"], [0.9, 0.01], overlay_probs=[0.9, 0.01]
    )
    assert len(fig.axes) == 4
    insets = [c for ax in fig.axes for c in ax.child_axes]
    assert len(insets) == 2  # one colour bar per overlay
    labels = [t.get_text() for c in insets for t in c.get_xticklabels()]
    assert labels.count("map max") == 2


def test_a_target_that_is_no_class_shows_no_probability(photos) -> None:  # noqa: ANN001
    res = CamResult(
        "cam",
        arrays={
            "heatmaps": np.random.default_rng(1).random((1, 1, 8, 8), np.float32),
            "probs": np.array([[0.2, 0.8]], np.float32),
            "targets": np.array([[-1]]),
        },
        meta={"method": "gradcam", "layers": ["x"], "images": ["street"], "classes": None,
              "task": "regression", "target_names": [["output 0"]], "top": None,
              "explicit_target": True, "from_tensor": [True]},
        originals=[photos[1][:64, :64]],
    )  # fmt: skip
    html = res._repr_html_()
    assert "gradcam · output 0" in html and "p = " not in html.split("nl-cam")[1]
    assert "targets output 0" in repr(res)
    assert res._repr_png_().startswith(b"\x89PNG")


def test_a_regressions_outputs_are_values_in_the_card_and_the_report() -> None:
    """The "top predictions" of a regression model were percentages ("1 245.6 %") with bars
    60·p px wide (147 px, or negative), in Jupyter and on the report page."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[4].bias.copy_(torch.tensor([0.2, 2.5, -0.5]))
    lens = netlens.load(model, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, task="regression")
    photo = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    html = lens.cam(photo, target="output:0")._repr_html_()
    page = lens.report(photo, sections="cam").html
    for text in (html, page):
        top = text[text.index('class="nl-top"') :]
        top = top[: top.index("</table>")]
        assert "%" not in top and "2.5" in top
        widths = [float(w) for w in re.findall(r"width:([-\d.]+)px", top)]
        assert max(widths) == 60.0 and min(widths) >= 0.0
        assert "not probabilities" in text
