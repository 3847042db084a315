"""Left items of the last notes and a user's walk: evaluate's scope text and table, the
--data hint, ablate's chance warning, top-level output=/task=, fixed-batch refusals, a
result's repr with its warnings, data= as a keyword."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_batch_traceability_14 import SIZE, Net, _png  # the same tiny model and images
from torch import nn

import netlens


def test_a_limit_cut_with_an_unreadable_image_counts_the_classes_it_read(tmp_path) -> None:
    """The first 3 of 5 images are a, a and b's only image, which cannot be read: 1 class
    scored, not the 2 the cut took."""
    _png(tmp_path / "a" / "x0.png", 0)
    _png(tmp_path / "a" / "x1.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not an image")
    _png(tmp_path / "c" / "x3.png", 3)
    _png(tmp_path / "c" / "x4.png", 4)
    kw = {"input_size": SIZE, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    lens = netlens.load(Net(), classes=["a", "b", "c"], **kw)
    r = lens.evaluate(str(tmp_path), metrics="deletion", steps=4, target="pred", limit=3)
    scope = r.meta["data_scope"]
    assert scope["classes"] == 1
    want = "the first 3 of 5 images, 2 of them read (1 unreadable), 1 of 3 classes"
    assert scope["text"] == want
    (line,) = [w for w in r.meta["warnings"] if "classes are in" in w]
    assert "only 1 of the data's 3 classes" in line and "--limit 5" in line


def test_data_given_as_an_argument_is_told_to_go_with_data(tmp_path) -> None:
    """``netlens evaluate MODEL imgs/``, as ``cam`` takes images: one line naming --data."""
    from typer.testing import CliRunner

    from netlens.cli.app import app

    res = CliRunner().invoke(app, ["evaluate", "m.pt", str(tmp_path)])
    assert res.exit_code == 1
    want = f"(data goes with --data: `netlens evaluate MODEL --data {tmp_path}`)"
    assert want in res.output
    res = CliRunner().invoke(app, ["kernels", "m.pt", str(tmp_path)])  # it takes no data
    assert res.exit_code == 1 and "`netlens kernels --help` lists the options" in res.output


def test_evaluates_table_says_what_it_scored_and_where_the_labels_came_from(tmp_path) -> None:
    from netlens.cli.tables import evaluate_table

    for i, cls in enumerate(["a", "b", "c"]):
        _png(tmp_path / cls / f"x{i}.png", i)
    kw = {"input_size": SIZE, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    lens = netlens.load(Net(), classes=["a", "b", "c"], **kw)
    r = lens.evaluate(str(tmp_path), metrics="deletion", steps=4)
    caption = evaluate_table(r).caption.splitlines()
    labels = f"labels (the classes explained): {r.meta['label_source']}"
    assert caption == ["images: all 3 images", labels]
    assert "folder names" in r.meta["label_source"]
    pred = lens.evaluate(str(tmp_path), metrics="deletion", steps=4, target="pred", limit=2)
    assert evaluate_table(pred).caption == "images: the first 2 of 3 images (2 of 3 classes)"


def test_ablate_says_when_the_intact_accuracy_is_no_better_than_chance() -> None:
    """Labels no image of which the model predicts: no ablation can lower its accuracy."""
    model = Net().eval()
    x = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 3
    r = netlens.ablate(model, (x, wrong), resamples=50, mode="zero")
    (line,) = [w for w in r.meta["warnings"] if "chance" in w]
    assert "accuracy is 0.000 on 8 images, no better than chance (0.333 for 3 classes)" in line
    assert "no ablation can lower it" in line and "--metric prob" in line
    right = netlens.ablate(model, (x, pred), resamples=50, mode="zero")
    assert not [w for w in right.meta["warnings"] if "chance" in w]
    top5 = netlens.ablate(
        model, (x, pred), metric="top5", resamples=50, mode="zero"
    )  # 3 classes: all in
    assert [w for w in top5.meta["warnings"] if "chance" in w] == []


class TwoOutputs(nn.Module):
    """A list of two heads (onnx2torch returns lists): the class scores are the second."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.aux = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pooled = self.net.features(x).mean(dim=(2, 3))
        return [self.aux(pooled), self.net.fc(pooled)]


def test_top_level_functions_take_the_output_and_task_the_messages_advise() -> None:
    """The refusals say "(output= in Python)": netlens.cam and netlens.ablate take it for a
    bare module, as netlens.load does; given with a Lens, it is refused in one line."""
    from netlens.errors import NetlensError

    model = TwoOutputs().eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    r = netlens.cam(model, x, output=1, layer="net.features.0")
    want = netlens.load(model, output=1).cam(x, layer="net.features.0")
    np.testing.assert_array_equal(r.heatmaps, want.heatmaps)
    assert [row["target"] for row in r.table] == model(x)[1].argmax(1).tolist()
    # labels checked against the picked output's 3 classes, not the other head's 2
    y = torch.tensor([2, 0])
    kw = {"layers": "net.features.0", "mode": "zero", "resamples": 20, "metric": "prob"}
    ab = netlens.ablate(model, (x, y), output=1, **kw | {"metric": "accuracy"})
    assert ab.baseline["value"] == (model(x)[1].argmax(1) == y).float().mean().item()
    assert netlens.ablate(model, x, output=1, **kw).baseline["value"] > 0
    reg = netlens.cam(model, x, output=1, task="regression", layer="net.features.0", target=0)
    assert reg.heatmaps.shape == (2, SIZE, SIZE)
    held = netlens.load(model, output=1)
    with pytest.raises(NetlensError, match=r"^output=0 belongs to the model, .*netlens.load"):
        netlens.cam(held, x, output=0)
    same = netlens.cam(held, x, output=1, task=None, layer="net.features.0")  # as it holds
    np.testing.assert_array_equal(same.heatmaps, want.heatmaps)


class FixedBatch(nn.Module):
    """An export's fixed batch: a Reshape to [1, C, -1] folds every image into one row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(f.reshape(1, 8, -1).mean(-1))


def test_ablate_and_evaluate_refuse_a_fixed_batch_and_run_one_image_at_a_time() -> None:
    """Folded rows were scored against the wrong labels (ablate: a message about label
    dtypes) or crashed (evaluate's perturbed passes: an IndexError)."""
    from netlens.errors import NetlensError

    model = FixedBatch().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    kw = {"layers": "c1,c2", "mode": "zero", "resamples": 20}
    one_at_a_time = r"not one row per image: it takes one image at a time .*--batch-size 1"
    with pytest.raises(NetlensError, match=one_at_a_time):
        netlens.ablate(model, (x, y), batch_size=2, **kw)
    single = netlens.ablate(model, (x, y), batch_size=1, **kw)
    each = [int(model(x[i : i + 1]).argmax()) == int(y[i]) for i in range(4)]
    assert single.baseline["value"] == pytest.approx(sum(each) / 4)
    lens = netlens.load(model)
    with pytest.raises(NetlensError, match=one_at_a_time):
        lens.evaluate((x, y), metrics="deletion", steps=4, chunk=1)
    ok = lens.evaluate((x, y), metrics="deletion", steps=4, chunk=1, batch_size=1)
    assert ok.table[0]["n"] == 4


def test_the_data_hint_is_not_given_when_data_was(tmp_path) -> None:
    """``--layers a b --data imgs``: the extra value is --layers' second, not the data."""
    from typer.testing import CliRunner

    from netlens.cli.app import app

    args = ["ablate", "m.pt", "--layers", "layer1", "layer2", "--data", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "data goes with --data" not in res.output
    assert "an option takes one value, a list comma-separated (a,b)" in res.output


def test_a_results_repr_shows_its_warnings() -> None:
    """A Python user printing a result sees what the CLI and the notebook view say."""
    model = Net().eval()
    x = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    wrong = (model(x).argmax(1) + 1) % 3
    r = netlens.ablate(model, (x, wrong), resamples=20, mode="zero")
    assert "  warning: the intact model's accuracy is 0.000" in repr(r)


def test_run_takes_the_data_as_a_keyword_too(tmp_path) -> None:
    """``lens.run("stats", data=...)``, as ``lens.ablate(data=...)`` takes it."""
    for i, cls in enumerate(["a", "b"]):
        _png(tmp_path / cls / f"x{i}.png", i)
    kw = {"input_size": SIZE, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    lens = netlens.load(Net(), classes=["a", "b", "c"], **kw)
    by_word = lens.run("stats", data=str(tmp_path), layers="features.1")
    by_place = lens.run("stats", str(tmp_path), layers="features.1")
    assert by_word.table == by_place.table and by_word.meta["samples"] == 2
