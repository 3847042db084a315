"""The HTML report: self-contained, built from the same Results the commands produce."""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.provenance import model_digest
from netlens.report import SECTIONS, build_report
from netlens.report.repro import file_sha256
from netlens.report.sections import mid_layer
from netlens.testing import assert_model_unchanged, assert_no_hooks

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "astronaut", "coffee", "rocket"]


@pytest.fixture(scope="module")
def lens() -> netlens.Lens:
    """torchvision resnet18 (random weights, BatchNorm randomised), 4 classes, 64 px."""
    import torchvision
    from conftest import randomize_bn

    torch.manual_seed(1)
    model = randomize_bn(torchvision.models.resnet18(num_classes=4), seed=1).eval()
    return netlens.Lens(model, netlens.Preprocess(size=(64, 64)), classes=CLASSES, name="rn18")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]


@pytest.fixture(scope="module")
def data(lens) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """24 real photo crops, preprocessed, with labels (an (images, labels) pair)."""
    rng = np.random.default_rng(0)
    pics = [
        skimage.data.chelsea(),
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.rocket(),
    ]
    crops, labels = [], []
    for i in range(24):
        k = i % 4
        img = pics[k]
        y, x = rng.integers(0, img.shape[0] - 200), rng.integers(0, img.shape[1] - 200)
        crops.append(img[y : y + 200, x : x + 200])
        labels.append(k)
    return lens.preprocess(crops), torch.tensor(labels)


@pytest.fixture(scope="module")
def report(lens, photos, data):  # noqa: ANN001
    with assert_model_unchanged(lens.model):
        rep = build_report(lens, photos, data=data, methods="gradcam,layercam", limit=8)
    assert_no_hooks(lens.model)
    return rep


def images_of(html: str) -> list[bytes]:
    return [base64.b64decode(u) for u in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_every_section_is_built_and_the_page_is_self_contained(report) -> None:  # noqa: ANN001
    assert [s.key for s in report.sections] == list(SECTIONS)
    assert report.skipped == {}
    html = report.html
    for key in SECTIONS:
        assert f'<section id="{key}"' in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing loaded from anywhere
    assert "http://" not in html and "https://" not in html and "<script" not in html
    pictures = images_of(html)
    assert len(pictures) >= 15
    assert all(
        cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) is not None for p in pictures
    )


def test_cams_show_every_image_for_every_method(report, photos) -> None:  # noqa: ANN001
    cam = next(s for s in report.sections if s.key == "cam")
    assert len(cam.parts["rows"]) == len(photos)
    assert [len(r["cells"]) for r in cam.parts["rows"]] == [2, 2, 2]
    assert [h.split(" · ")[0] for h in cam.parts["methods"]] == ["gradcam", "layercam"]
    assert cam.commands[1].split("  # ")[0].endswith("--method layercam")


def test_sections_hold_the_results_the_commands_produce(report, lens, data) -> None:  # noqa: ANN001
    ablate = next(s for s in report.sections if s.key == "ablate")
    direct = lens.ablate(data, limit=8, seed=0)
    cells = [c["text"] for row in ablate.cards[0]["table"]["rows"] for c in row]
    for row in direct.table:
        assert f"{row['value']:.4g}" in cells
    stats = next(s for s in report.sections if s.key == "stats")
    direct_stats = lens.run("stats", data, limit=8)
    shown = {r[0]["text"]: r for r in stats.cards[0]["table"]["rows"]}
    for row in direct_stats.table:
        assert row["layer"] in shown
        assert f"{row['mean']:.4g}" in [c["text"] for c in shown[row["layer"]]]


def test_repro_header_names_versions_checksum_data_seeds_and_commands(report, lens) -> None:  # noqa: ANN001
    html = report.html
    assert model_digest(lens.model) in html
    assert f"torch</th><td>{torch.__version__}" in html
    assert "seed: ablation bootstrap" in html and "tensor(" not in html  # the pair not dumped
    commands = re.findall(r'<code class="mono">(netlens [^<]+)</code>', html)
    # a model held in memory has no file to name: MODEL stands for it, and the line says so
    assert any(c.startswith("netlens report MODEL") and "in memory" in c for c in commands)
    for c in commands:
        shlex.split(c.replace("&#39;", "'"))  # every one is a valid shell line


def test_weights_checksum_follows_the_weights_not_the_file_format(lens, tmp_path: Path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    sd = lens.model.state_dict()
    torch.save(sd, tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    a = netlens.load(tmp_path / "m.pt", arch="tv:resnet18")
    b = netlens.load(tmp_path / "m.safetensors", arch="tv:resnet18")
    assert model_digest(a.model) == model_digest(b.model) == model_digest(lens.model)
    with torch.no_grad():
        a.model.fc.bias[0] += 1e-3
    assert model_digest(a.model) != model_digest(lens.model)
    expected = hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    assert file_sha256(tmp_path / "m.pt") == expected


def test_mid_layer_is_a_middle_convolution(lens) -> None:  # noqa: ANN001
    convs = [r.name for r in lens.layers() if r.type == "Conv2d" and r.output_shape]
    assert mid_layer(lens.layers()) == convs[len(convs) // 2]


def test_chosen_data_section_without_data_fails_with_one_line(lens, photos) -> None:  # noqa: ANN001
    with pytest.raises(NetlensError, match="no data: this model's card names no dataset; give"):
        build_report(lens, photos, sections="stats")


def test_default_sections_without_data_are_skipped_and_named(lens, photos) -> None:  # noqa: ANN001
    rep = build_report(lens, photos, sections=None, methods="gradcam", max_images=2)
    assert set(rep.skipped) == {"stats", "ablate", "evaluate"}
    assert "Skipped: no data" in rep.html


def test_bad_sections_and_methods_fail_before_any_work(lens) -> None:  # noqa: ANN001
    with pytest.raises(
        NetlensError, match="unknown report section 'abalte'.*did you mean 'ablate'"
    ):
        build_report(lens, sections="cam,abalte")
    with pytest.raises(NetlensError, match="gradcamm"):
        build_report(lens, methods="gradcamm")


def test_save_writes_one_file_whole_or_not_at_all(report, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    saved = report.save(tmp_path)
    assert saved.path == tmp_path / "report-rn18.html"
    assert saved.path.read_text(encoding="utf-8") == report.html
    assert report.save(tmp_path / "x" / "mine.html").path == tmp_path / "x" / "mine.html"

    def broken(src, dst):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr("netlens.report.build.os.replace", broken)
    with pytest.raises(OSError):
        report.save(tmp_path / "y")
    assert not (tmp_path / "y").exists()  # made for the page, left with nothing: removed


def test_lens_report_writes_the_page(lens, photos, tmp_path: Path) -> None:  # noqa: ANN001
    rep = lens.report(photos[:1], sections="card,kernels", out=tmp_path)
    assert rep.path.is_file() and "report-rn18.html" in repr(rep)


def test_cli_report_json_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(
        app, ["report", "--sections", "card,kernels", "--out", str(tmp_path), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    path = tmp_path / "report-zoo-shapes-allconv.html"
    assert path.is_file() and str(path) in ok.stdout
    bad = runner.invoke(app, ["report", "--sections", "cams", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1
    assert "unknown report section 'cams'; did you mean 'cam'" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "b").exists()


def test_cli_unreadable_image_is_skipped_exit_3_or_strict_exit_1(tmp_path: Path) -> None:
    good = tmp_path / "cat.png"
    cv2.imwrite(str(good), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    runner = CliRunner()
    args = ["report", str(good), str(bad), "--sections", "cam", "--method", "gradcam"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "-q"])
    assert res.exit_code == 3, res.output
    page = (tmp_path / "a" / "report-zoo-shapes-allconv.html").read_text()
    assert "skipped: " in page and "broken.png" in page and "cat" in page
    assert "broken.png" in res.output and "--skip-bad" in res.output
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "-q", "--skip-bad"])
    assert ok.exit_code == 0
    strict = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "-q", "--strict"])
    assert strict.exit_code == 1 and "broken.png" in strict.output
    assert not (tmp_path / "c" / "report-zoo-shapes-allconv.html").exists()


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys, netlens.cli.app; print('torch' in sys.modules, 'jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_templates_ship_as_package_data() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # tomllib is Python 3.11+; netlens runs on 3.10
    line = re.search(r"^\[tool\.setuptools\.package-data\]\nnetlens = \[(.*)\]$", text, re.M)
    patterns = re.findall(r'"([^"]+)"', line.group(1))
    folder = ROOT / "src" / "netlens" / "report" / "templates"
    files = [p.relative_to(ROOT / "src" / "netlens").as_posix() for p in folder.iterdir()]
    assert files and all(any(fnmatch(f, pat) for pat in patterns) for f in files)


def test_every_rerun_command_parses_on_the_cli() -> None:
    import typer

    rep = netlens.load().report(out=None, methods="gradcam", limit=16, max_images=2)
    commands = [c for s in rep.sections for c in s.commands]
    assert len(commands) == 8
    group = typer.main.get_command(app)
    for line in commands:
        words = shlex.split(line)
        assert words[0] == "netlens"
        sub = group.get_command(None, words[1])  # the group's context is not needed to look up
        sub.make_context(words[1], words[2:])  # raises on an unknown option or a bad value


def test_table_cells_keep_names_whole_and_records_short() -> None:
    from netlens.report.templating import cell

    hurt = [
        {"class": "ankle-boot", "before": 0.9583, "after": 0.125},
        {"class": "bag", "before": 1.0, "after": 0.5},
    ]
    assert cell(hurt) == "ankle-boot 0.9583→0.125; bag 1→0.5"
    assert cell("layer3.0.downsample.0") == "layer3.0.downsample.0"
    assert cell(float("nan")) == "–" and cell(0.123456) == "0.1235" and cell(True) == "yes"
    assert cell(list(range(20))) == "[20 values]"


def test_sections_name_the_images_that_ran_not_the_limit(lens, photos, data) -> None:  # noqa: ANN001
    """With 5 images and the default limits, the page said "on 512 images" (ablate) and "on 32
    images" (evaluate): the limit, not the data."""
    x, y = data
    rep = build_report(lens, photos[:1], data=(x[:5], y[:5]), sections="ablate,evaluate")
    intros = {s.key: s.intro for s in rep.sections}
    assert " on 5 images" in intros["ablate"] and " on 5 images" in intros["evaluate"]


def test_a_model_that_records_no_input_size_gets_its_page(photos) -> None:  # noqa: ANN001
    """A `--arch FILE.py:Class` state_dict or a pickled module records no input size: the
    model section crashed with "'NoneType' object is not subscriptable"."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    lens = netlens.load(model.eval())  # no input size recorded: the first image's
    rep = build_report(lens, photos[:1], sections="card,cam", methods="gradcam")
    assert "records no input size" in rep.html
