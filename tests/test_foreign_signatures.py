"""Models whose forward or output netlens does not take as it is: a forward of two inputs
(RAFT's ``forward(image1, image2)``), a detector's boxes per image, a list of dicts picked
with ``output=0``, a torch.fx GraphModule whose containers were inlined. Each is refused in
one line that says what to do, the same line from every analysis."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _load(model: nn.Module, **kw: object) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(model.eval(), **kw)


def _data(n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long)


def _refusal(call) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NetlensError) as info:
            call()
    return str(info.value)


# -- a forward of two inputs --------------------------------------------------------------


class _TwoInputs(nn.Module):
    """RAFT-like: two images in, a map out; ``encoder`` takes one."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, first: torch.Tensor, second: torch.Tensor, steps: int = 2) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(first), self.encoder(second)], 1))


@pytest.mark.parametrize("what", ["features", "stats", "top-activations", "cam", "layers"])
def test_a_two_input_forward_is_refused_in_one_line_naming_its_inputs(what: str) -> None:
    """features/stats/top-activations raised the model's raw TypeError; cam advised an input
    size (--input-size), which cannot help a model that needs a second input."""
    model = _TwoInputs()
    lens = _load(model, input_size=32)
    x, data = _data()[0][:1], _data()
    calls = {
        "features": lambda: lens.features(x, "encoder", top=2),
        "stats": lambda: lens.run("stats", data, layers="encoder"),
        "top-activations": lambda: lens.run("top-activations", data, layer="encoder"),
        "cam": lambda: lens.cam(x),
        "layers": lambda: lens.layers(),  # the dry forward's own message
    }
    msg = _refusal(calls[what])
    params = inspect.signature(model.forward).parameters.values()
    needed = [p.name for p in params if p.default is inspect.Parameter.empty]
    assert needed == ["first", "second"]
    assert f"({', '.join(needed)})" in msg and "one tensor" in msg
    assert "model.encoder(x)" in msg  # a sub-module that takes one input
    assert "--input-size" not in msg and "\n" not in msg


class _OneInputTypeError(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.conv(x))  # TypeError: expected a tuple of tensors


def test_a_one_input_models_own_type_error_is_not_called_a_second_input() -> None:
    lens = _load(_OneInputTypeError(), input_size=32)
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever it was, not the refusal
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lens.features(_data()[0][:1], "conv", top=2)
    assert "more than one input" not in str(info.value)


# -- detectors ------------------------------------------------------------------------------


class _Detector(nn.Module):
    """torchvision-shaped: ``backbone.body`` of stages, one dict of boxes per image."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        )
        self.score = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        f = self.backbone.body(x).mean((2, 3))
        s = self.score(f).sigmoid()
        return [
            {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.ones(1), "scores": v}
            for v in s
        ]


def _last_backbone_layer(model: _Detector) -> str:
    return f"backbone.body.{list(model.backbone.body.named_children())[-1][0]}"


def test_a_detector_with_the_auto_layer_is_told_to_name_a_backbone_layer() -> None:
    """features was told only that netlens does not explain detectors; a named backbone
    layer works, so the line names a real one, and says nothing of wrapping (no need)."""
    model = _Detector()
    lens = _load(model, input_size=32)
    x = _data()[0][:1]
    msg = _refusal(lambda: lens.features(x, top=2))
    layer = _last_backbone_layer(model)
    assert f"--layer {layer}" in msg and "wrap" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens.features(x, layer, top=2)  # the layer named works


@pytest.mark.parametrize("what", ["gradcam", "eigencam", "ablate", "evaluate"])
def test_a_detector_cam_is_told_to_wrap_the_model_for_one_score_per_image(what: str) -> None:
    model = _Detector()
    lens = _load(model, input_size=32)
    x, data = _data()[0][:1], _data()
    call = {
        "ablate": lambda: lens.ablate(data),
        "evaluate": lambda: lens.evaluate(data),
    }.get(what, lambda: lens.cam(x, method=what, layer="backbone.body.1"))
    msg = _refusal(call)
    assert "wrap the model" in msg and "one score per image" in msg and "CAMs" in msg
    assert f"--layer {_last_backbone_layer(model)}" in msg  # for features/stats/top only
    assert "features, stats and top-activations" in msg


def test_picking_a_dict_element_of_the_output_names_its_keys() -> None:
    """``output=0`` on a list of dicts said "no tensor '0' (it has: 0)"."""
    model = _Detector()
    keys = ", ".join(model(torch.zeros(1, 3, 32, 32))[0])
    lens = _load(model, input_size=32, output=0)
    msg = _refusal(lambda: lens.cam(_data()[0][:1], layer="backbone.body.1"))
    assert f"'0' is a dict ({keys}), not a tensor" in msg and "wrap the model" in msg
    assert "model(x)[0][KEY]" in msg and "no tensor '0'" not in msg


# -- torch.fx -------------------------------------------------------------------------------


class _Staged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


def test_stats_on_an_fx_inlined_container_gives_the_fx_explanation() -> None:
    """stats said "did not run ... a module that runs only in training" where features says
    torch.fx inlined it."""
    from torchvision.models.feature_extraction import create_feature_extractor

    fe = create_feature_extractor(_Staged(), {"stage": "maps"})
    lens = _load(fe, input_size=32)
    data = _data()
    stats = _refusal(lambda: lens.run("stats", data, layers="stage"))
    features = _refusal(lambda: lens.features(data[0][:1], "stage", top=2))
    assert stats == features and "torch.fx inlined it" in stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens.run("stats", data, layers="stage.0")  # a leaf runs


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        y = self.conv(x).mean((2, 3))
        return [y, y], y[:, :1]


def test_picking_a_list_element_of_the_output_says_it_is_no_tensor() -> None:
    """``output=0`` on ``([t, t], t)`` said "no tensor '0' (it has: 0, 1)"."""
    lens = _load(_Nested(), input_size=32, output=0)
    msg = _refusal(lambda: lens.cam(_data()[0][:1], layer="conv"))
    assert "'0' is a list, not a tensor" in msg and "no tensor '0'" not in msg
