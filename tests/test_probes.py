"""Probes: in-place safety, repeated calls, hook removal, model left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import LayerNotFoundError, NetlensError
from netlens.testing import assert_model_unchanged


def test_inplace_relu_does_not_clobber_capture(resnet18):
    """timm resnet18: bn1 is followed by an in-place ReLU; the capture keeps its negatives."""
    x = torch.randn(2, 3, 64, 64)
    with netlens.probe(resnet18, ["bn1", "layer4.1.bn2"]) as p:
        resnet18(x)
    ref = resnet18.bn1(resnet18.conv1(x))
    assert ref.min() < 0
    assert torch.equal(p["bn1"].output, ref)
    # bn2 output is modified in place by `x += shortcut` and the ReLU after it
    blk = resnet18.layer4[1]
    with netlens.probe(resnet18, ["layer4.0"]) as q:
        resnet18(x)
    ref2 = blk.bn2(blk.conv2(blk.act1(blk.bn1(blk.conv1(q["layer4.0"].output)))))
    assert torch.allclose(p["layer4.1.bn2"].output, ref2, atol=1e-6)
    assert p["layer4.1.bn2"].output.min() < 0


def test_plain_detach_would_be_wrong(resnet18):
    """The failure the probe avoids: a detached reference sees the in-place ReLU."""
    store = {}
    h = resnet18.bn1.register_forward_hook(lambda m, i, o: store.setdefault("o", o.detach()))
    try:
        resnet18(torch.randn(1, 3, 64, 64))
    finally:
        h.remove()
    assert store["o"].min() >= 0


def test_to_cpu_and_outputs_stay_separate(tiny):
    x = torch.randn(2, 3, 32, 32)
    with netlens.probe(tiny, "bn1", to="cpu") as p:
        tiny(x)
        tiny(x + 1)
    outs = p["bn1"].outputs
    assert len(outs) == 2 and not torch.equal(outs[0], outs[1])
    assert outs[0].min() < 0  # the in-place ReLU after bn1 did not reach the capture
    with pytest.raises(NetlensError, match="ran 2 times"):
        _ = p["bn1"].output


def test_module_called_twice_keeps_every_call():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    x = torch.randn(3, 4)
    with netlens.probe(model, "0") as p:
        y = model(x)
    first, second = p["0"].outputs
    assert torch.equal(second, y)
    assert torch.equal(first, shared(x))
    with pytest.raises(NetlensError, match=r"select one call: 0@0.*0@1.*\.outputs holds"):
        _ = p["0"].output


def test_grads_match_manual_autograd_and_leave_params(resnet18):
    x = torch.randn(2, 3, 64, 64)
    with (
        assert_model_unchanged(resnet18),
        netlens.probe(resnet18, ["layer3", "layer4"], grads=True) as p,
    ):
        logits = resnet18(x)
        p.compute_grads(logits[:, 3].sum())
    # reference: split the network at layer4 by hand
    with torch.no_grad():
        feats = resnet18.layer3(
            resnet18.layer2(
                resnet18.layer1(resnet18.maxpool(resnet18.act1(resnet18.bn1(resnet18.conv1(x)))))
            )
        )
    a = feats.clone().requires_grad_(True)
    out = resnet18.forward_head(resnet18.layer4(a))
    (g,) = torch.autograd.grad(out[:, 3].sum(), a)
    assert torch.allclose(p["layer3"].grad, g, atol=1e-5)
    assert p["layer4"].grad.shape == p["layer4"].output.shape


def test_grads_work_with_frozen_params(tiny):
    for q in tiny.parameters():
        q.requires_grad_(False)
    with netlens.probe(tiny, "conv2", grads=True) as p:
        out = tiny(torch.randn(1, 3, 32, 32))
        p.compute_grads(out[:, 0].sum())
    assert p["conv2"].grad is not None
    assert all(not q.requires_grad and q.grad is None for q in tiny.parameters())


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_hooks_removed_when_forward_raises(tiny, exc):
    def explode(m, i, o):
        raise exc()

    handle = tiny.conv2.register_forward_hook(explode)  # a user hook that raises
    with assert_model_unchanged(tiny):
        with pytest.raises(exc), netlens.probe(tiny, ["conv1", "bn1", "conv2"], grads=True):
            tiny(torch.randn(1, 3, 32, 32))
    handle.remove()
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert _get_current_dispatch_mode() is None


def test_existing_user_hooks_and_modes_kept(tiny):
    calls = []
    h = tiny.conv1.register_forward_hook(lambda m, i, o: calls.append(1))
    tiny.train()
    tiny.bn1.eval()
    with assert_model_unchanged(tiny):
        with netlens.probe(tiny, "type:Conv2d") as p:
            tiny(torch.randn(2, 3, 32, 32))
        p.remove()
        p.remove()  # safe twice
    assert calls == [1]
    h.remove()


def test_probe_every_module_and_unknown_layer(resnet18):
    with netlens.probe(resnet18, "*") as p:
        resnet18(torch.randn(1, 3, 32, 32))
    assert len(p) == len(dict(resnet18.named_modules())) - 1
    assert p["layer1.0.conv1"].output.shape == (1, 64, 8, 8)
    with pytest.raises(LayerNotFoundError, match="layer4.1.conv2"):
        netlens.probe(resnet18, "layer4.1.cnv2")
    with pytest.raises(LayerNotFoundError, match="was not probed"):
        _ = p["nope"]


def test_grads_without_grad_flag_is_an_error(tiny):
    with netlens.probe(tiny, "conv1") as p:
        tiny(torch.randn(1, 3, 32, 32))
    with pytest.raises(NetlensError, match="grads=True"):
        p.compute_grads(torch.tensor(0.0))


def test_a_stage_that_gradient_checkpointing_skips_is_named_with_a_block_that_runs(resnet18):
    """timm's set_grad_checkpointing runs a stage's blocks one by one: ``layer4`` itself is
    never called. The probe says why and which block to pick; ``auto`` picks that block and
    the map equals the plain model's."""
    import copy

    import numpy as np

    ckpt = copy.deepcopy(resnet18)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 64, 64)
    with netlens.probe(ckpt, "layer4", grads=True) as p:
        out = ckpt(x)
        with pytest.raises(NetlensError, match=r"gradient checkpointing.*'layer4\.1'"):
            p.compute_grads(out[:, 0].sum())
    with pytest.raises(NetlensError, match=r"did not run .*gradient checkpointing.*'layer4\.1'"):
        p["layer4"].output  # noqa: B018
    plain, checkpointed = netlens.cam(resnet18, x), netlens.cam(ckpt, x)
    assert checkpointed.meta["layers"] == ["layer4.1"]
    np.testing.assert_allclose(checkpointed.heatmaps, plain.heatmaps, atol=1e-6)
