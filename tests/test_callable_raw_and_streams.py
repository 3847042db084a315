"""A callable target is handed an output netlens cannot read as classes or maps (a detector's
N×A×6 boxes) as the model returns it; a one-pass stream (``__iter__`` returning the same
iterator) is read once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset

import netlens
from netlens.errors import NetlensError, TargetError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class Boxes(nn.Module):
    """A YOLOX-like head: N×A×6 (A = 32·32 anchors; x, y, w, h, objectness, class)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv1(x))).flatten(2).transpose(1, 2)


def best_objectness(out: torch.Tensor) -> torch.Tensor:
    return out[:, :, 4].max(1).values  # the most confident box's, one per image


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo)


def _reference(model: nn.Module, x: torch.Tensor, method: str) -> np.ndarray:
    pgc = pytest.importorskip("pytorch_grad_cam")
    per_image = [lambda o: best_objectness(o[None])[0]] * len(x)  # pgc scores o = output[i]
    with getattr(pgc, method)(model=model, target_layers=[model.conv1]) as explainer:
        if hasattr(explainer, "batch_size"):
            explainer.batch_size = 4
        ref = explainer(input_tensor=x, targets=per_image)
    assert ref.std() > 0.05
    return _minmax(ref)


@pytest.mark.parametrize("task", [None, "regression"])
@pytest.mark.parametrize(("ours", "theirs"), [("gradcam", "GradCAM"), ("scorecam", "ScoreCAM")])
def test_callable_target_scores_a_boxes_output_as_pytorch_grad_cam(
    task: str | None, ours: str, theirs: str
) -> None:
    model, x = Boxes().eval(), _x()
    lens = netlens.Lens(model, task=task)
    got = lens.cam(x, method=ours, layer="conv1", target=best_objectness, batch_size=4)
    np.testing.assert_allclose(got.heatmaps, _reference(model, x, theirs), atol=2e-4)
    row = got.rows()[0]
    assert row["target_name"] == "best_objectness" and row["prediction"] is None


def test_callable_target_masked_batches_on_threads_stay_raw() -> None:
    model, x = Boxes().eval(), _x()
    torch.set_num_threads(2)  # Score-CAM's masked batches on two threads (one_thread restores)
    got = netlens.Lens(model).cam(
        x, method="scorecam", layer="conv1", target=best_objectness, batch_size=4
    )
    torch.set_num_threads(1)
    np.testing.assert_allclose(got.heatmaps, _reference(model, x, "ScoreCAM"), atol=2e-4)


def test_callable_target_result_checked_in_one_line() -> None:
    lens = netlens.Lens(Boxes().eval())
    with pytest.raises(TargetError, match=r"one score per output row \(2,\), not \(2, 1024\)"):
        lens.cam(_x(), layer="conv1", target=lambda out: out[:, :, 4])


def test_class_targets_still_refuse_a_boxes_output() -> None:
    lens = netlens.Lens(Boxes().eval())
    for target in (None, 0):
        with pytest.raises(NetlensError, match="not maps of the image") as e:
            lens.cam(_x(), layer="conv1", target=target)
        assert "target function" in str(e.value) and "\n" not in str(e.value)


def test_callable_target_of_a_classifier_still_gets_its_logits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.Sigmoid(),
    ).eval()
    seen: list[torch.Tensor] = []
    x = _x()
    netlens.Lens(model).cam(x, layer="1", target=lambda o: seen.append(o) or o[:, 0])
    z = torch.logit(model(x).double()).float()  # the sigmoid's probabilities read as logits
    torch.testing.assert_close(seen[0].detach(), z, atol=1e-4, rtol=1e-4)


def test_sanity_and_evaluate_with_a_callable_on_a_boxes_output_say_one_line() -> None:
    lens = netlens.Lens(Boxes().eval())
    for run in (
        lambda: lens.run("sanity", _x(), target=best_objectness, layer="conv1"),
        lambda: lens.evaluate((_x(), torch.tensor([0, 1])), target=best_objectness),
    ):
        with pytest.raises(NetlensError) as e:
            run()
        assert "\n" not in str(e.value) and "not maps of the image" not in str(e.value)
        assert "output:K" not in str(e.value) or "class index" in str(e.value)
    with pytest.raises(NetlensError, match="a target function does not name"):
        lens.run("sanity", _x(), target=best_objectness, layer="conv1")


# -- one-pass streams -------------------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def _items(n: int) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(3, 32, 32, generator=g), i % 3) for i in range(n)]


class OneShot(IterableDataset):
    """A network or shard reader: ``__iter__`` hands out its one generator."""

    def __init__(self, items: list[Any]) -> None:
        self.n, self.g = len(items), (it for it in items)

    def __iter__(self):  # noqa: ANN204
        return self.g

    def __len__(self) -> int:
        return self.n


class Again(IterableDataset):
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def test_one_pass_stream_evaluates_as_a_re_iterable_one() -> None:
    lens, items = netlens.Lens(_model()), _items(2)
    kw = {"methods": "gradcam", "metrics": "deletion", "layer": "2"}
    want = lens.evaluate(Again(items), **kw)
    got = lens.evaluate(OneShot(items), **kw)
    assert got.meta["images"] == want.meta["images"] == 2
    for k, v in want.arrays.items():
        np.testing.assert_allclose(got.arrays[k], v, atol=1e-6, err_msg=k)


def test_one_pass_stream_ablates_as_a_re_iterable_one() -> None:
    lens, items = netlens.Lens(_model()), _items(2)
    want = lens.ablate(Again(items), metric="prob", layers="2")
    got = lens.ablate(OneShot(items), metric="prob", layers="2")
    assert got.table == want.table


def test_one_pass_stream_read_again_past_its_kept_items_says_one_line() -> None:
    from netlens.data.user_datasets import _KEPT, users_dataset

    ds = users_dataset(OneShot(_items(_KEPT + 2)), None, None, None)
    assert [int(ds[i][1]) for i in range(_KEPT + 2)] == [i % 3 for i in range(_KEPT + 2)]
    assert int(ds[0][1]) == 0  # kept
    with pytest.raises(NetlensError, match="can be read only once .* make __iter__ return a new"):
        ds[_KEPT]


def test_dataloader_over_a_one_pass_stream_ablates_as_over_a_re_iterable_one() -> None:
    from torch.utils.data import DataLoader

    lens, items = netlens.Lens(_model()), _items(3)
    want = lens.ablate(DataLoader(Again(items), batch_size=2), metric="prob", layers="2")
    got = lens.ablate(DataLoader(OneShot(items), batch_size=2), metric="prob", layers="2")
    assert got.table == want.table


def test_module_level_cam_hands_a_function_the_raw_output_too() -> None:
    """`netlens.cam(model, x, target=fn)` (no Lens.run) reads as `lens.cam` does."""

    class Boxes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.h = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.h(torch.relu(self.c(x))).flatten(2).transpose(1, 2)  # N×(H·W)×6

    model, x = Boxes().eval(), torch.rand(2, 3, 32, 48)
    fn = lambda out: out[:, :, 4].max(1).values  # noqa: E731
    got = netlens.cam(model, x, target=fn, layer="c").heatmaps
    want = netlens.Lens(model).cam(x, target=fn, layer="c").heatmaps
    np.testing.assert_allclose(got, want, atol=1e-6)
