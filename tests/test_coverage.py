"""A fast subset of the coverage sweep (benchmarks/coverage.py) and checks of its verdicts.

Four architectures of different kinds, random weights, 64-px photos from scikit-image: a timm
CNN and a timm ViT through the Python API (with Grad-CAM parity against pytorch-grad-cam), a
timm PVT (blocks called with their grid size) and a torchvision MobileNet through the CLI.
The whole sweep is ``python benchmarks/coverage.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("pytorch_grad_cam")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("netlens_coverage_sweep", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("name", "route"),
    [
        ("resnet18", "py"),
        ("vit_tiny_patch16_224", "py"),
        ("pvt_v2_b0", "cli"),
        ("tv:mobilenet_v3_small", "cli"),
    ],
)
def test_sweep_subset_passes(coverage, name: str, route: str) -> None:
    arch = coverage.select(coverage.all_archs(), name, None, None)[0]
    row = coverage.sweep_one(arch, 64, route, coverage.photos(4))
    failed = {s: c.detail for s, c in row.cells.items() if c.status == "FAIL"}
    assert not failed, failed
    expected = {"build", "cam", "free", "features", "kernels", "ablate"}
    expected |= {"parity"} if route == "py" else set()
    assert {s for s, c in row.cells.items() if c.status == "ok"} == expected
    assert row.layer  # the auto layer the CAM used


def test_sweep_lists_every_torchvision_classifier_and_40_plus_archs(coverage) -> None:
    import torchvision

    archs = coverage.all_archs()
    tv = {a.name[3:] for a in archs if a.family == "tv"}
    assert tv == set(torchvision.models.list_models(module=torchvision.models))
    assert len(archs) >= 40 and len({a.name for a in archs}) == len(archs)


def test_verdicts_one_line_reason_or_failure(coverage) -> None:
    from netlens.errors import AnalyzerError

    def refused():
        raise AnalyzerError("no layer fits")

    said, _ = coverage.attempt(refused)
    assert (said.status, said.detail) == ("said", "no layer fits")
    failed, _ = coverage.attempt(lambda: 1 / 0)
    assert failed.status == "FAIL" and "ZeroDivisionError" in failed.cell()
    ok, value = coverage.attempt(lambda: 3)
    assert (ok.status, value) == ("ok", 3)
    good = np.full((2, 8, 8), 0.5, dtype=np.float32)
    coverage.check_maps(good, 2, 8)
    for bad in (good[:1], good[:, :4], good + 1, good * np.nan):
        with pytest.raises(coverage.CheckFailed):
            coverage.check_maps(bad, 2, 8)


def test_randomize_leaves_no_constant_parameter(coverage) -> None:
    model = coverage.build(coverage.Arch("convnext_atto"), 64)
    for name, p in model.named_parameters():
        flat = p.flatten()
        assert p.numel() == 1 or not bool((flat == flat[0]).all()), name
    bn = coverage.build(coverage.Arch("resnet18"), 64).bn1
    assert bn.running_mean.abs().sum() > 0 and not torch.equal(bn.running_var, torch.ones(64))
