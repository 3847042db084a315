"""The user's model and RNG as they were after netlens (sweep 12, lead's fixes): a module whose
class overrides ``train`` (torchvision's feature extractors swap their traced graph there) is
given its flag back through its own ``train``; ``lens.report`` and ``lens.layers`` leave torch's
global RNG as it was; auto never picks a quantization module's weight as a map."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


class _DropNet(nn.Module):
    """conv → ReLU → functional dropout (traced with the train flag) → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.conv(x)), 0.5, training=self.training)
        return self.fc(h.mean((2, 3)))


def test_a_feature_extractor_trains_on_its_train_graph_after_an_analysis() -> None:
    """After ``lens.cam`` on a ``create_feature_extractor`` model in train mode, it said
    ``training=True`` but ran its eval graph (dropout off), and ``model.train()`` could not
    switch it back."""
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    fe = create_feature_extractor(_DropNet(), return_nodes={"fc": "logits"}).train()
    x = torch.randn(2, 3, 16, 16)
    lens = netlens.load(fe, input_size=(3, 16, 16), output="logits")
    lens.cam(x, method="gradcam", layer="conv")
    fe.train()
    assert fe.training and fe.graph is fe.train_graph
    torch.manual_seed(5)
    a = fe(x)["logits"]
    torch.manual_seed(5)
    b = fe(x)["logits"]
    fe.eval()
    assert torch.equal(a, b) and not torch.equal(a, fe(x)["logits"])  # dropout is on


class _MCDropout(nn.Module):
    """Monte-Carlo dropout: draws from the global RNG in every forward, eval mode or not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(torch.relu(self.conv(x)).mean((2, 3)), 0.1, training=True))


@pytest.mark.parametrize("call", ["layers", "report"])
def test_layers_and_report_leave_the_global_rng_as_it_was(call: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    lens = netlens.load(_MCDropout().eval(), input_size=(3, 16, 16))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    if call == "layers":
        lens.layers()
    else:
        lens.report(x[:1], data=(x, torch.tensor([0, 1])), out=None, sections="card,cam")
    assert torch.equal(state, torch.get_rng_state())


def test_auto_skips_a_fake_quant_modules_weight_on_a_qat_model() -> None:
    """resnet18 at 32 px: layer4 is 1×1, and the last 4-D output larger than 1×1 was
    ``layer4.1.conv2.weight_fake_quant`` (the 512×512×3×3 weight, fake-quantized): auto chose
    it and every analysis refused it."""
    import torch.ao.quantization as tq
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).train()
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare_qat(model, inplace=True)
    x = torch.randn(2, 3, 32, 32)
    model(x)
    model.eval()
    lens = netlens.load(model, input_size=(3, 32, 32))
    assert lens.cam(x, method="gradcam").meta["layers"] == ["layer3"]
