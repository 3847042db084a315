"""Ablating units that return a tuple whose first element is a tensor (Hugging Face Swin and
Data2VecVision layers return ``(hidden_states, None)``): only element 0 is replaced, the rest
passes on, and every row equals a naive forward-hook reference computed by hand."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.ablation.engine import Engine

torch.set_num_threads(1)


class _TupleBlock(nn.Module):
    """A pre-activation residual block that returns ``(x + f(x), extra)``."""

    def __init__(self, c: int, extra: bool) -> None:  # extra: element 1 a tensor, else None
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y = x + self.conv(torch.relu(x))
        return y, (self.conv.weight.sum() * 0 + x.mean() if self.extra else None)


class _TupleNet(nn.Module):
    """Two tuple blocks; the second one's element 1 (a tensor made from its input) is added to
    the logits, so an ablation that dropped the rest of the tuple would show."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.blocks = nn.ModuleList([_TupleBlock(6, False), _TupleBlock(6, True)])
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks[0](x)[0]  # indexed, not unpacked: the model traces with torch.fx
        out = self.blocks[1](x)
        return self.head(out[0].mean((2, 3))) + out[1]


def _kl(model: nn.Module, x: torch.Tensor, ablated: Callable[[], torch.Tensor]) -> float:
    with torch.no_grad():
        p0 = _logits(model(x)).log_softmax(-1)
        lp = ablated().log_softmax(-1)
    return float((p0.exp() * (p0 - lp)).sum(-1).mean())


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def _reference(model: nn.Module, x: torch.Tensor, unit: str, mode: str) -> float:
    """KL of the naive ablation: a forward hook replacing element 0 and keeping the rest."""
    module = model.get_submodule(unit)
    mean = None
    if mode == "mean":
        seen: list[torch.Tensor] = []
        h = module.register_forward_hook(lambda m, i, o: seen.append(o[0].double()))
        with torch.no_grad():
            model(x)
        h.remove()
        mean = torch.cat(seen).mean(0).float()

    def hook(m: nn.Module, i: tuple, o: tuple) -> tuple:
        first = {
            "identity": lambda: i[0],
            "zero": lambda: torch.zeros_like(o[0]),
            "mean": lambda: mean.expand_as(o[0]),  # type: ignore[union-attr]
        }[mode]()
        return (first, *o[1:])

    def run() -> torch.Tensor:
        h = module.register_forward_hook(hook)
        try:
            return _logits(model(x))
        finally:
            h.remove()

    return _kl(model, x, run)


def _check(model: nn.Module, x: torch.Tensor, layers: Any, units: list[str]) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = _logits(model(x))
    for mode in ("identity", "zero", "mean"):
        res = netlens.load(model).ablate(x, layers=layers, mode=mode, metric="kl", progress=False)
        rows = {r["layer"]: r["value"] for r in res.rows if r["kind"] != "baseline"}
        assert list(rows) == units, (mode, list(rows))
        for unit in units:
            ref = _reference(model, x, unit, mode)
            assert rows[unit] == pytest.approx(ref, rel=1e-4, abs=1e-6), (mode, unit)
            assert ref > 1e-4  # the ablation changes something
        assert set(res.meta["paths"].values()) == {"naive"}  # tuple units: never cached
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(_logits(model(x)), before)
        block = model.get_submodule(units[0])
        captured: list[Any] = []
        h = block.register_forward_hook(lambda m, i, o: captured.append(o))
        model(x)
        h.remove()
    assert isinstance(captured[0], tuple) and isinstance(captured[0][0], torch.Tensor)


def test_a_hand_written_tuple_block_replaces_element_zero_only() -> None:
    torch.manual_seed(0)
    model = _TupleNet().eval()
    x = torch.randn(6, 3, 8, 8)
    engine = Engine(model, ["blocks.0", "blocks.1"])
    assert engine.check(x)  # the model traces, but tuple units take the naive path
    assert not engine.is_fast("blocks.0") and engine.trace_error is None
    _check(model, x, None, ["blocks.0", "blocks.1"])  # found as residual blocks


def test_channels_of_a_tuple_unit_are_its_first_elements() -> None:
    torch.manual_seed(0)
    model = _TupleNet().eval()
    x = torch.randn(6, 3, 8, 8)
    res = netlens.load(model).ablate(
        x, layers="blocks.1", mode="zero", metric="kl", channels=[2], progress=False
    )
    row = next(r for r in res.rows if r["kind"] == "channel")

    def hook(m: nn.Module, i: tuple, o: tuple) -> tuple:
        first = o[0].clone()
        first[:, 2] = 0
        return (first, *o[1:])

    def run() -> torch.Tensor:
        h = model.blocks[1].register_forward_hook(hook)
        try:
            return model(x)
        finally:
            h.remove()

    assert row["value"] == pytest.approx(_kl(model, x, run), rel=1e-4, abs=1e-6)


def _perturbed(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            nn.init.normal_(mod.weight, 1, 0.5)
            nn.init.normal_(mod.bias, 0, 0.5)
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.2)
    return model.eval()


def test_hugging_face_swin_and_data2vec_layers() -> None:
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    swin = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
        window_size=4, num_labels=4,
    )  # fmt: skip
    d2v = transformers.Data2VecVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_attention_heads=2,
        intermediate_size=32, num_labels=4, num_hidden_layers=2,
    )  # fmt: skip
    x = torch.randn(6, 3, 32, 32)
    model = _perturbed(transformers.SwinForImageClassification(swin))
    blocks = [f"swin.encoder.layers.{s}.blocks.{b}" for s in (0, 1) for b in (0, 1)]
    _check(model, x, None, blocks)
    model = _perturbed(transformers.Data2VecVisionForImageClassification(d2v))
    _check(model, x, "data2vec_vision.encoder.layer.1", ["data2vec_vision.encoder.layer.1"])
