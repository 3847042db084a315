"""Layer calls: ``name@k`` / ``:consumed`` selectors, ``auto`` on reused and in-place modules,
the calls column of the layer table."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netlens.errors import LayerNotFoundError
from netlens.layers import LayerCall, auto_layer, layer_table, resolve_layers


class SharedAct(nn.Module):
    """One ReLU module applied after the stem and again after the last conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.conv(x))
        return self.fc(x.mean((2, 3)))


class LeNet5(nn.Module):
    """LeNet-5 with in-place ReLUs (the activation rewrites the conv's output tensor)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


class FunctionalHead(nn.Module):
    """DenseNet's pattern: the feature stack's output is activated in place in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_layer_call_parts_and_text():
    c = LayerCall.parse("layer4.1.relu@-1")
    assert (c.name, c.call, c.consumed) == ("layer4.1.relu", -1, False)
    assert c == "layer4.1.relu@-1" and isinstance(c, str)
    d = LayerCall.parse(" features@0:consumed ")
    assert (d.name, d.call, d.consumed, str(d)) == ("features", 0, True, "features@0:consumed")
    assert LayerCall("act") == "act" and LayerCall("act").call is None
    assert {LayerCall("act", 1): 1}["act@1"] == 1  # keys like plain strings
    for clone in (copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        assert (clone.name, clone.call, clone.consumed) == ("features", 0, True)
    assert json.dumps([c]) == '["layer4.1.relu@-1"]'
    with pytest.raises(LayerNotFoundError, match=r"relu@0.*relu@-1"):
        LayerCall.parse("relu@last")


def test_resolve_calls_after_names_globs_and_types():
    import torchvision

    model = torchvision.models.resnet18(num_classes=3).eval()
    got = resolve_layers(model, "layer4.1.relu@-1, layer*.0.relu@0, type:Linear@0")
    assert got == [
        "layer4.1.relu@-1",
        *[f"layer{i}.0.relu@0" for i in range(1, 5)],
        "fc@0",
    ]
    assert all(isinstance(c, LayerCall) for c in got)
    assert [c.name for c in got][:2] == ["layer4.1.relu", "layer1.0.relu"]
    assert resolve_layers(model, "layer4:consumed")[0].consumed
    with pytest.raises(LayerNotFoundError, match="layer4.1.relu"):
        resolve_layers(model, "layer4.1.rlu@1")
    with pytest.raises(LayerNotFoundError, match="auto picks its call"):
        resolve_layers(model, "auto@1")


def test_auto_picks_the_last_call_of_a_shared_module():
    model = SharedAct().eval()
    layer = auto_layer(model, torch.zeros(1, 3, 16, 16))
    assert layer == "act@1" and (layer.name, layer.call) == ("act", 1)


def test_auto_picks_the_inplace_relu_not_the_conv_before_it():
    assert auto_layer(LeNet5(inplace=True).eval(), torch.zeros(1, 1, 28, 28)) == "relu2"
    assert auto_layer(LeNet5(inplace=False).eval(), torch.zeros(1, 1, 28, 28)) == "relu2"


def test_auto_consumed_where_no_module_returns_the_activated_tensor():
    layer = auto_layer(FunctionalHead().eval(), torch.zeros(1, 3, 8, 8))
    assert layer == "features:consumed" and layer.consumed


def test_auto_on_torchvision_models():
    import torchvision

    example = torch.zeros(1, 3, 64, 64)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    assert auto_layer(resnet, example) == "layer4"  # not a relu call inside it
    densenet = torchvision.models.densenet121(num_classes=3).eval()
    assert auto_layer(densenet, example) == "features:consumed"


def test_layer_table_counts_calls():
    rows = {r.name: r for r in layer_table(SharedAct().eval(), torch.zeros(1, 3, 16, 16))}
    assert rows["act"].calls == 2
    assert rows["act"].call_shapes == ((1, 8, 16, 16), (1, 16, 8, 8))
    assert rows["act"].output_shape == (1, 8, 16, 16)
    assert rows["stem"].calls == 1 and rows["fc"].calls == 1
    d = rows["act"].to_dict()
    assert d["calls"] == 2 and d["call_shapes"] == [[1, 8, 16, 16], [1, 16, 8, 8]]
    json.dumps(d)


def test_layer_table_marks_modules_that_never_run():
    model = SharedAct().eval()
    model.spare = nn.Linear(2, 2)  # registered, never called
    rows = {r.name: r for r in layer_table(model, torch.zeros(1, 3, 16, 16))}
    assert rows["spare"].calls == 0 and rows["spare"].output_shape is None


def test_cli_layers_shows_calls(tmp_path):
    from typer.testing import CliRunner

    from netlens.cli.app import app

    torch.manual_seed(0)
    path = tmp_path / "shared.pt"
    torch.save(SharedAct().eval(), path)
    runner = CliRunner()
    args = ["layers", str(path), "--trust", "--input-size", "16"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["layers"]}
    assert rows["act"]["calls"] == 2 and rows["conv"]["calls"] == 1
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "calls" in table.output


def test_layer_table_on_torchvision_resnet_counts_block_relus():
    import torchvision

    model = torchvision.models.resnet18(num_classes=3).eval()
    rows = {r.name: r for r in layer_table(model, torch.zeros(1, 3, 64, 64))}
    assert rows["layer1.0.relu"].calls == 2 and rows["relu"].calls == 1
    assert rows["layer4"].calls == 1
