"""The report on models, data and options it first met badly: each test a bug it had."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.report import build_report
from netlens.report.build import Report, _named_inputs, lens_invocation

pytestmark = [pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "cup", "rocket"]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def small_lens(**kw) -> netlens.Lens:  # noqa: ANN003
    return netlens.load(small_cnn(), classes=CLASSES, input_size=32, mean=(0.5,), std=(0.5,), **kw)


def write_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A class-sorted folder: 3 classes × 2 images."""
    for c, name in enumerate(CLASSES):
        for k in range(2):
            write_png(tmp_path / "val" / name / f"{name}{k}.png", 10 * c + k)
    return tmp_path / "val"


def section(rep, key: str):  # noqa: ANN001, ANN201
    return next(s for s in rep.sections if s.key == key)


def test_cam_warnings_are_shown_as_notes(monkeypatch) -> None:  # noqa: ANN001
    """A headless backbone: `netlens cam` warned "outputs look like features", the page not."""
    lens = small_lens()
    real = netlens.Lens.cam

    def cam(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        res = real(self, *a, **k)
        res.meta["warnings"] = ["the model's 512 outputs look like features, not class scores"]
        return res

    monkeypatch.setattr(netlens.Lens, "cam", cam)
    x = torch.rand(2, 3, 32, 32)
    rep = build_report(lens, x, sections="cam", methods="gradcam,layercam", progress=False)
    notes = section(rep, "cam").notes
    assert notes == ["gradcam: the model's 512 outputs look like features, not class scores"] + [
        "layercam: the model's 512 outputs look like features, not class scores"
    ]
    assert "look like features, not class scores" in rep.html


def test_data_sections_say_they_used_the_first_images_and_which_classes(folder) -> None:  # noqa: ANN001
    rep = build_report(small_lens(), data=str(folder), sections="stats", limit=2, progress=False)
    stats = section(rep, "stats")
    assert "the first 2 of 6 images (1 of 3 classes)" in stats.intro
    assert any("Only 1 of the data's 3 classes" in n and "--limit 6" in n for n in stats.notes)
    assert "--limit 6" in rep.html


def test_evaluate_warnings_are_shown_as_notes_once(folder, monkeypatch) -> None:  # noqa: ANN001
    """The evaluate card dropped its result's warnings (flat maps, empty masks) from the page;
    the data's scope is said once, by the result's own warning."""
    real = netlens.Lens.evaluate

    def evaluate(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        res = real(self, *a, **k)
        res.meta["warnings"] = [*res.meta["warnings"], "2 of 2 image(s) have flat maps"]
        return res

    monkeypatch.setattr(netlens.Lens, "evaluate", evaluate)
    rep = build_report(small_lens(), data=str(folder), sections="evaluate", limit=2, progress=False)
    ev = section(rep, "evaluate")
    assert "the first 2 of 6 images (1 of 3 classes)" in ev.intro
    assert "2 of 2 image(s) have flat maps" in ev.notes
    assert sum("of the data's 3 classes" in n for n in ev.notes) == 1, ev.notes
    assert "flat maps" in rep.html


def test_cli_rerun_commands_repeat_every_load_option(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["report", "--sections", "card,kernels", "--out", str(out), "-q"]
    args += ["--mean", "0.5", "--std", "0.25", "--interpolation", "bicubic", "--crop-pct", "0.9"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    page = next(out.glob("*.html")).read_text()
    commands = re.findall(r"<code[^>]*>(netlens [^<]*)</code>", page)
    assert commands
    for c in commands:
        for flag in ("--mean 0.5", "--std 0.25", "--interpolation bicubic", "--crop-pct 0.9"):
            assert flag in c, c


def test_python_report_names_the_model_file_and_its_options(tmp_path: Path, folder) -> None:  # noqa: ANN001
    f = tmp_path / "m.pt"
    torch.save(small_cnn(), f)
    lens = netlens.load(str(f), trust=True, classes=CLASSES, input_size=32, mean=(0.5,), std=(0.5,))
    rep = build_report(lens, data=str(folder), sections="card,stats", limit=2, progress=False)
    layers = section(rep, "card").commands[0]
    words = shlex.split(layers)
    assert words[:3] == ["netlens", "layers", str(f)]
    assert "--classes cat,cup,rocket" in layers and "--input-size 3,32,32" in layers
    assert f"--data {folder}" in section(rep, "stats").commands[0]
    memory = build_report(small_lens(), torch.rand(1, 3, 32, 32), sections="card", progress=False)
    line = section(memory, "card").commands[0]
    assert line.startswith("netlens layers MODEL") and "given in memory" in line


def test_images_taken_from_the_data_are_named_by_their_files(folder) -> None:  # noqa: ANN001
    rep = build_report(
        small_lens(), data=str(folder), sections="cam", methods="gradcam", max_images=2
    )
    cam = section(rep, "cam")
    assert [r["name"] for r in cam.parts["rows"]] == ["cat0", "cat1"]
    words = shlex.split(cam.commands[0])
    assert str(folder / "cat" / "cat0.png") in words and str(folder / "cat" / "cat1.png") in words


def test_cli_report_does_not_offer_distributed(tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["report", "--distributed", "2", "--out", str(out)])
    assert res.exit_code != 0 and "No such option: --distributed" in res.output
    assert "--distributed" not in CliRunner().invoke(app, ["report", "--help"]).output
    assert not out.exists()


def test_an_unreadable_first_image_leaves_features_and_the_image_count(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "aaa_broken.png").write_text("not an image")
    for k in range(3):
        write_png(tmp_path / "imgs" / f"b{k}.png", k)
    rep = build_report(
        small_lens(),
        str(tmp_path / "imgs"),
        sections="cam,features",
        methods="gradcam",
        max_images=2,
        progress=False,
    )
    assert not rep.skipped
    assert [r["name"] for r in section(rep, "cam").parts["rows"]] == ["b0", "b1"]
    assert any("aaa_broken.png" in line for line in rep.skipped_inputs)
    assert "b0.png" in section(rep, "features").commands[0]


class Probe(nn.Module):
    """A linear probe on a frozen backbone (run under no_grad): no gradient reaches it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f.mean((2, 3)))


def test_one_failing_method_leaves_the_others() -> None:
    lens = netlens.load(Probe().eval(), classes=CLASSES, input_size=16, mean=(0.5,), std=(0.5,))
    x = torch.rand(1, 3, 16, 16)
    rep = build_report(lens, x, sections="cam,sanity", methods="gradcam,scorecam", progress=False)
    assert not rep.skipped
    cam = section(rep, "cam")
    assert [h.split(" · ")[0] for h in cam.parts["methods"]] == ["scorecam"]
    assert any(n.startswith("gradcam failed on this model:") for n in cam.notes)
    assert cam.intro.endswith(", 1 method.") and "shown: scorecam" in cam.notes[0]
    sanity = section(rep, "sanity")
    assert [m for m, *_ in sanity.parts["verdicts"]] == ["scorecam"]
    assert "Left out: gradcam" in sanity.notes[0]


def test_ablation_falls_back_to_zero_when_identity_cannot_skip() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()
    lens = netlens.load(model, classes=CLASSES, input_size=16, mean=(0.5,), std=(0.5,))
    data = (torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]))
    rep = build_report(lens, data=data, sections="ablate", progress=False)
    ablate = section(rep, "ablate")
    assert "(zero)" in ablate.intro and "mode zero" in ablate.notes[0]
    assert "--mode zero" in ablate.commands[0] and "--mode mean" not in rep.html


def test_a_regression_model_explains_output_0() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = nn.Sequential(model, nn.Linear(4, 1)).eval()
    lens = netlens.load(model, task="regression", input_size=16, mean=(0.5,), std=(0.5,))
    x = torch.rand(1, 3, 16, 16)
    rep = build_report(lens, x, sections="cam,sanity", methods="gradcam", progress=False)
    assert not rep.skipped
    for key in ("cam", "sanity"):
        s = section(rep, key)
        assert any("output 0" in n for n in s.notes)
        assert "--target output:0" in s.commands[0]


def test_cli_out_ending_in_html_writes_that_file(tmp_path: Path) -> None:
    page = tmp_path / "sub" / "page.html"
    res = CliRunner().invoke(app, ["report", "--sections", "card", "--out", str(page), "-q"])
    assert res.exit_code == 0, res.output
    assert page.is_file() and "<html" in page.read_text()


def test_wide_tables_scroll_and_a_narrow_histogram_title_fits() -> None:
    css = (Path(netlens.__file__).parent / "report" / "templates" / "card.css").read_text()
    rule = re.search(r"\.nl-table\{([^}]*)\}", css).group(1)
    assert "overflow-x:auto" in rule
    from netlens.render.stats_figures import histograms_figure

    hist = ("layer1", np.ones(10), np.linspace(0, 1, 11), 0.5, 0.1)
    fig = histograms_figure([hist], {"samples": 4, "eps": 0})
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    width = fig.get_size_inches()[0] * fig.dpi
    assert box.x0 >= 0 and box.x1 <= width


# -- names, pictures and paths a user brings (sweep 8) ----------------------------------------
def tiny(outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, outputs),
    ).eval()  # fmt: skip


def tiny_lens(classes=None, outputs: int = 3, **kw) -> netlens.Lens:  # noqa: ANN001
    pre = netlens.Preprocess(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    return netlens.Lens(tiny(outputs), pre, classes=classes, **kw)


def photo(seed: int = 0, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)


def flat(html: str) -> str:
    return " ".join(html.split())


# -- 1. the colour legend ------------------------------------------------------------------------
def test_a_classifier_legend_speaks_of_probabilities_not_of_a_regression() -> None:
    lens = tiny_lens(["cat", "dog", "bird"])
    res = lens.cam(photo())
    assert res.meta["task"] == "multiclass"
    page = build_report(lens, [photo()], sections="cam", methods="gradcam").html
    for html in (res._repr_html_(), page):
        assert "p is the model's probability" in flat(html)
        assert "a regression), not probabilities" not in flat(html)
    reg = tiny_lens(task="regression").cam(photo(), target="output:0")
    assert "a regression), not probabilities" in flat(reg._repr_html_())


# -- 2. a CAM result keeps its pictures ------------------------------------------------------------
def test_a_cam_result_shows_and_saves_the_picture_its_maps_were_made_of(tmp_path: Path) -> None:
    lens = tiny_lens(["cat", "dog", "bird"])
    path = tmp_path / "frame.png"
    first = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((48, 40)))
    Image.fromarray(first).save(path)
    res = lens.cam(path)
    res.save(tmp_path / "a")
    Image.fromarray(skimage.data.chelsea()[:40, :48]).save(path)  # a loop writes the next frame
    np.testing.assert_array_equal(res.original(0), first)
    res.save(tmp_path / "b")
    for png in (tmp_path / "a").glob("*.png"):
        a, b = np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "b" / png.name))
        np.testing.assert_array_equal(a, b)
    path.unlink()
    assert "data:image/png" in res._repr_html_()  # no ImageError: the picture is held
    np.testing.assert_array_equal(res.original(0), first)


def test_a_large_photo_is_kept_at_2048_px_and_drawn_as_before(tmp_path: Path) -> None:
    import cv2

    from netlens.render.overlay import overlay

    pre = netlens.Preprocess(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    lens = netlens.Lens(tiny(), pre)
    full = cv2.resize(skimage.data.astronaut(), (2600, 1900), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "big.png"
    Image.fromarray(full).save(path)
    res = lens.cam(path)
    assert res.original(0).shape == (1497, 2048, 3)  # 1900 · 2048 / 2600, rounded
    # as drawn from the whole photo: the crop the model saw, measured on the full image
    heat = res.arrays["heatmaps"][0, 0]
    want = overlay(full, heat, box=pre.crop_box(full.shape[:2]), min_side=256, max_side=2048)
    got = next(iter(res.pictures().values()))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# -- 3. no ipywidgets warning in Jupyter -----------------------------------------------------------
def test_loading_a_model_in_a_notebook_prints_no_ipywidgets_warning() -> None:
    # tqdm.autonotebook takes a jupyterlite marker module for a notebook: without ipywidgets it
    # warns "IProgress not found" on the first import of timm that does not filter it
    script = (
        "import sys, types, warnings\n"
        "sys.modules['IPython.utils._process_emscripten'] = types.ModuleType('m')\n"
        "warnings.simplefilter('always')\n"
        "import torch, torchvision, netlens\n"
        "torch.set_num_threads(1)\n"
        "netlens.load(torchvision.models.resnet18(num_classes=3).eval(), input_size=32)\n"
        "print('loaded')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert p.returncode == 0 and "loaded" in p.stdout, p.stderr[-2000:]
    assert "IProgress" not in p.stderr and "ipywidgets" not in p.stderr


# -- 4. class names on the rerun commands ----------------------------------------------------------
def test_names_with_a_comma_go_to_a_classes_file_named_on_the_command(tmp_path: Path) -> None:
    from netlens.data.labels import read_class_names

    names = ["zebra, striped", "apple", "mango"]
    lens = tiny_lens(names, card={"source": "model.pt"})
    call = _named_inputs(lens_invocation(lens), None, "data_folder")
    line = call.command("ablate", data=True, limit=8)
    words = shlex.split(line.split("  #")[0])
    assert words[words.index("--classes") + 1] == "CLASSES.json"
    remark = line.split("  # ", 1)[1]
    assert remark.startswith("CLASSES.json: ")
    listed = json.loads(remark[remark.index("[") :])
    assert listed == names
    (tmp_path / "CLASSES.json").write_text(json.dumps(listed))  # as the remark says
    assert read_class_names(str(tmp_path / "CLASSES.json")) == names  # what --classes reads
    short = lens_invocation(tiny_lens(["cat", "dog", "bird"], card={"source": "m.pt"}))
    assert short.options["classes"] == "cat,dog,bird" and not short.remarks


def test_class_names_read_off_the_model_are_not_spelled_on_the_command() -> None:
    import torchvision

    lens = netlens.Lens(
        torchvision.models.squeezenet1_1(num_classes=1000).eval(), card={"source": "sq.pt"}
    )
    assert len(lens.classes) == 1000  # ImageNet's, told from the head
    call = lens_invocation(lens)
    assert "classes" not in {k for k, v in call.options.items() if v is not None}
    assert len(call.command("kernels")) < 400


# -- 5. images and data held in memory -------------------------------------------------------------
def test_images_and_data_in_memory_are_placeholders_with_a_remark() -> None:
    lens = tiny_lens(["cat", "dog", "bird"], card={"source": "model.pt"})
    x, y = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2] * 2)
    rep = build_report(
        lens, [photo(0), photo(1)], data=(x, y), sections="cam,stats", methods="gradcam", limit=6
    )
    commands = {s.key: s.commands for s in rep.sections}
    for line in commands["cam"]:
        words = shlex.split(line.split("  #")[0])
        assert words[:4] == ["netlens", "cam", "model.pt", "IMAGES"]
        assert "# IMAGES: the images were given in memory" in line
    (stats,) = commands["stats"]
    words = shlex.split(stats.split("  #")[0])
    assert words[words.index("--data") + 1] == "DATA"
    assert "# DATA: the data was given in memory (tuple)" in stats
    files = _named_inputs(lens_invocation(lens), ["a.png"], "folder")
    assert files.images == ["a.png"] and files.data == "folder" and not files.remarks


# -- 6. a model without names ----------------------------------------------------------------------
def test_the_card_of_a_model_without_names_gives_its_output_count() -> None:
    lens = tiny_lens(outputs=5)
    assert lens.classes is None
    n = lens.model(torch.zeros(1, 3, 32, 32)).shape[1]
    rep = build_report(lens, [photo()], sections="card")
    facts = dict(rep.sections[0].parts["facts"])
    assert facts["classes"] == f"{n} (unnamed: 0–{n - 1})"


# -- 7. bidi controls in names ---------------------------------------------------------------------
def _outside_isolation(html: str) -> str:
    """The page's text outside attributes, <bdi> elements, FSI…PDI isolates, a card header's
    key-value boxes (inline blocks, unicode-bidi: isolate) and table cells holding text alone
    (a cell is a paragraph of its own: nothing follows a name in it)."""
    text = re.sub(r'<span class="nl-kv">.*?</span>', "", html)
    text = re.sub(r'="[^"]*"', "", text)
    text = re.sub(r"<bdi>.*?</bdi>", "", text, flags=re.S)
    text = re.sub(r"<td[^>]*>[^<]*</td>", "", text)
    return re.sub("\u2068.*?\u2069", "", text, flags=re.S)


def test_a_right_to_left_override_in_a_name_cannot_reorder_the_text_after_it() -> None:
    lens = tiny_lens(["\u202ecat", "dog", "bird"])
    rep = build_report(lens, [photo()], sections="card,cam", methods="gradcam")
    assert "\u202e" in rep.html
    assert "\u202e" not in _outside_isolation(rep.html)
    for res in (lens.cam(photo(), target=0), lens.cam(photo(), top=3)):
        card = res._repr_html_()
        assert "\u202ecat</bdi>" in card and "\u202e" not in _outside_isolation(card)


# -- 8. a long name in the CAM table ---------------------------------------------------------------
def test_a_long_class_name_wraps_in_the_cam_table(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("tornado.websocket", reason="tornado is needed for DevTools")
    import test_report_browser as tb

    if tb.CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    name = (
        "Black-throated blue warbler, adult male in breeding plumage, photographed at a feeder "
        "(Setophaga caerulescens), Ontario"
    )
    lens = tiny_lens([name, "other", "third"])
    methods = "gradcam,gradcam++,xgradcam"
    rep = build_report(lens, [photo(0, 64), photo(1, 64)], sections="cam", methods=methods)
    rep = rep.save(tmp_path / "long.html")
    monkeypatch.setattr(
        tb,
        "PAGE_JS",
        """JSON.stringify({
      scrollWidth: document.documentElement.scrollWidth,
      names: Array.from(document.querySelectorAll('.compare td.name')).map(
        t => Math.round(t.getBoundingClientRect().width)),
      tops: Array.from(document.querySelectorAll('#cam .nl-top td.nl-name')).map(
        t => Math.round(t.getBoundingClientRect().width)),
      height: document.documentElement.scrollHeight})""",
    )
    state, events = tb.inspect_page(rep.path, tmp_path / "long.png")
    assert tb.problems(events) == []
    assert state["scrollWidth"] <= 1400  # the 1400 px window: nothing off-screen
    assert min(state["names"]) >= 40 and max(state["tops"]) <= 200


# -- 9. a ViT's middle layer -----------------------------------------------------------------------
def test_a_vit_shows_a_middle_block_not_its_patch_stem() -> None:
    import timm

    from netlens.report.sections import mid_layers

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                            img_size=32, depth=4).eval()  # fmt: skip
    lens = netlens.Lens(vit, netlens.Preprocess(size=(32, 32)))
    middle = f"blocks.{len(vit.blocks) // 2}"
    assert mid_layers(lens.layers()) == [middle, "patch_embed.proj"]
    rep = build_report(lens, [photo()], sections="features")
    assert rep.sections[0].intro == f"The 16 most active channels of {middle} for the first image."
    assert f"--layer {middle}" in rep.sections[0].commands[0]


# -- 10. --out names a folder ----------------------------------------------------------------------
def test_out_html_that_is_a_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import netlens.report.build as build

    taken = tmp_path / "reports.html"
    taken.mkdir()

    def never(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the report was built")

    monkeypatch.setattr(build, "build_report", never)
    r = CliRunner().invoke(
        app, ["report", "zoo:shapes-allconv", "-s", "card", "-o", str(taken), "-q"]
    )
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is a folder" in lines[0] and "report.html" in lines[0]
    assert "Errno" not in r.output and ".tmp" not in r.output
    with pytest.raises(NetlensError, match="is a folder"):
        Report("<html></html>", [], 0.0, "m").save(taken)
    import netlens.report

    monkeypatch.setattr(netlens.report, "build_report", never)  # lens.report: before building
    with pytest.raises(NetlensError, match="is a folder"):
        netlens.load("zoo:shapes-allconv").report(out=taken)
    assert list(taken.iterdir()) == []
