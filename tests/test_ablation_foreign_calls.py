"""ablate where a unit's calls are not what one look at the model shows: a shared activation also
called inside a block that is itself a unit (hidden from the traced graph), a residual block
called again with another non-tensor argument, and top-5 on tied logits. Each result is compared
with a naive reference: plain forward hooks replacing the module's output at every call, a full
forward, the metric by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.scoring import METRICS
from netlens.errors import NetlensError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _xy(n: int = 8, size: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=gen)
    return x, torch.arange(n) % classes


@torch.no_grad()
def _naive(model: nn.Module, x: torch.Tensor, unit: str, fill) -> torch.Tensor:
    """Logits with every call of ``unit`` replaced by ``fill(input, output, call)``."""
    module, calls = model.get_submodule(unit), [0]

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return fill(args[0], out, calls[0] - 1)

    handle = module.register_forward_hook(hook)
    try:
        return model(x)
    finally:
        handle.remove()


def _kl(base: torch.Tensor, ablated: torch.Tensor) -> float:
    lb, la = F.log_softmax(base.double(), 1), F.log_softmax(ablated.double(), 1)
    return float((lb.exp() * (lb - la)).sum(1).mean())


def _rows(model: nn.Module, x, y, **kw) -> dict[str, dict]:
    res = netlens.ablate(model, (x, y), metric="kl", progress=False, resamples=10, **kw)
    return {r["unit"]: r for r in res.rows}


# -- a shared activation also called inside a block that is a unit ---------------------------
class _Block(nn.Module):
    def __init__(self, c: int, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(c, c, 3, padding=1), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(x))


class SharedInBlock(nn.Module):
    """``self.act`` runs at the top level and inside ``b1`` (passed in as ``act=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = _Block(8, self.act)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b1(self.act(self.stem(x))).mean((2, 3)))


def _per_call_means(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    handle = model.act.register_forward_hook(lambda m, i, o: outs.append(o.double().mean(0)))
    with torch.no_grad():
        model(x)
    handle.remove()
    return outs


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_shared_activation_hidden_inside_a_unit_block_is_replaced_at_every_call(mode) -> None:
    torch.manual_seed(0)
    model, (x, y) = SharedInBlock().eval(), _xy()
    model.fc.weight.data *= 20
    means = _per_call_means(model, x)
    fill = (
        (lambda i, o, c: torch.zeros_like(o))
        if mode == "zero"
        else (lambda i, o, c: means[c].float().expand_as(o).clone())
    )
    with torch.no_grad():
        want = _kl(model(x), _naive(model, x, "act", fill))
    together = _rows(model, x, y, layers="act,b1", mode=mode, batch_size=4)["act"]
    alone = _rows(model, x, y, layers="act", mode=mode, batch_size=4)["act"]
    assert together["value"] == pytest.approx(want, rel=1e-6)
    assert together["value"] == alone["value"]
    assert together["path"] == "naive"

    engine = Engine(model, ["act", "b1"])
    assert engine.check(x[:4])
    assert not engine.is_fast("act") and engine.is_fast("b1")  # b1 itself runs once
    assert engine.hidden_calls == {"act": 2}


# -- a residual block called again with another non-tensor argument --------------------------
class _Scaled(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 0:
            return self.conv(x)  # no residual add at this call
        return x * scale + self.conv(x)  # shortcut x * scale


class Reused(nn.Module):
    def __init__(self, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = scales
        self.stem, self.blk = nn.Conv2d(3, 8, 3, padding=1), _Scaled(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in self.scales:
            x = self.blk(x, scale=s) if s == 2.5 else self.blk(x, s)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("scales", [(1.0, 3.0), (2.5,)])
def test_identity_skips_each_call_of_a_block_with_its_own_arguments(scales) -> None:
    torch.manual_seed(0)
    model, (x, y) = Reused(scales).eval(), _xy()
    with torch.no_grad():
        want = _kl(model(x), _naive(model, x, "blk", lambda i, o, c: i * scales[c]))
        first = _kl(model(x), _naive(model, x, "blk", lambda i, o, c: i * scales[0]))
    row = _rows(model, x, y, layers="blk", mode="identity")["blk"]
    assert row["kind"] == "residual"
    assert row["path"] == ("naive" if len(scales) > 1 else "cached")
    assert row["value"] == pytest.approx(want, rel=1e-6)
    if len(scales) > 1:
        assert abs(first - want) > 0.1 * want  # the first call's argument at both: wrong


def test_identity_refuses_a_call_of_the_block_that_is_not_residual() -> None:
    torch.manual_seed(0)
    model, (x, y) = Reused((1.0, 0.0)).eval(), _xy()
    with pytest.raises(NetlensError, match=r"identity cannot skip 'blk' at its call with argu"):
        _rows(model, x, y, layers="blk", mode="identity")


# -- top-5 on tied logits ----------------------------------------------------------------------
def _top5_by_hand(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The 5 first classes of a stable sort by descending logit: ties by index, as argmax."""
    top = np.argsort(-z, axis=1, kind="stable")[:, :5]
    return (top == y[:, None]).any(1).astype(np.float64)


def test_top5_breaks_ties_by_index_as_argmax_does() -> None:
    top5, acc = METRICS["top5"].per_image, METRICS["accuracy"].per_image
    y = np.arange(10)
    flat = np.zeros((10, 10))
    assert top5(flat, y, flat).tolist() == [1.0] * 5 + [0.0] * 5
    gen = np.random.default_rng(0)
    z = gen.integers(0, 3, (500, 12)).astype(np.float64)  # many ties
    y = gen.integers(0, 12, 500)
    assert np.array_equal(top5(z, y, z), _top5_by_hand(z, y))
    assert np.all(top5(z, y, z) >= acc(z, y, z))  # a top-1 hit is a top-5 hit


class _Dead(nn.Module):
    """Zeroing ``conv`` makes every logit equal (a bias-free head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_top5_of_an_ablation_that_ties_every_logit() -> None:
    torch.manual_seed(0)
    model, (x, y) = _Dead().eval(), _xy(n=10, classes=10)
    res = netlens.ablate(
        model, (x, y), layers="conv", mode="zero", metric="top5", progress=False, resamples=10
    )
    z = _naive(model, x, "conv", lambda i, o, c: torch.zeros_like(o))
    assert bool((z == z[:, :1]).all())
    want = _top5_by_hand(z.double().numpy(), y.numpy()).mean()
    assert res.rows[0]["value"] == pytest.approx(want) == 0.5
    topk = (z.topk(5, 1).indices == y[:, None]).any(1).double().mean().item()
    assert topk == 0.5  # torch.topk picks other tied classes, but as many


# -- a shared activation called inside a unit block only for some batches --------------------
class _Gated(nn.Module):
    """Runs the shared activation again only when its input is large: a hidden call the first
    batch need not show."""

    def __init__(self, c: int, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(c, c, 3, padding=1), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + (self.act(y) if float(x.detach().abs().mean()) > 2.0 else y)


class GatedShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = _Gated(8, self.act)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc((self.b1(s) + self.act(s)).mean((2, 3)))


def test_a_hidden_call_that_only_later_batches_make_is_replaced_there_too() -> None:
    torch.manual_seed(0)
    model = GatedShared().eval()
    model.fc.weight.data *= 20
    x, y = _xy()
    x[4:] *= 20.0  # the second batch's stem outputs are large: b1 calls act a second time
    with torch.no_grad():
        assert float(model.stem(x[:4]).abs().mean()) < 2.0
        assert float(model.stem(x[4:]).abs().mean()) > 2.0
        zero = lambda i, o, c: torch.zeros_like(o)  # noqa: E731
        base = torch.cat([model(x[:4]), model(x[4:])])  # the gate reads the whole batch
        want = torch.cat([_naive(model, x[:4], "act", zero), _naive(model, x[4:], "act", zero)])
    row = _rows(model, x, y, layers="act,b1", mode="zero", batch_size=4)["act"]
    assert row["value"] == pytest.approx(_kl(base, want), rel=1e-6)
    assert row["path"] == "naive"


# -- channels of a unit whose first axis is images × windows (Swin's window attention) -------
class Windowed(nn.Module):
    """A stem, then a Linear over the tokens of 2×2 windows: its input and output are
    (N·4)×T×C, the windows of all images stacked on the first axis."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)  # N×8×8×8
        n, c, h, w = s.shape
        win = s.view(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, -1, c)
        y = self.attn(win).relu()  # (N·4)×16×8
        return self.fc(y.reshape(n, -1, c).mean(1))


def test_channels_of_a_windowed_unit_match_a_hook_on_the_cached_path() -> None:
    torch.manual_seed(0)
    model, (x, y) = Windowed().eval(), _xy(n=6)
    model.fc.weight.data *= 20

    def zero_channel(k: int):
        def fill(i, o, c):
            o = o.clone()
            o[..., k] = 0
            return o

        return fill

    with torch.no_grad():
        base = model(x)
        want = {k: _kl(base, _naive(model, x, "attn", zero_channel(k))) for k in (0, 3, 5)}
    res = netlens.ablate(
        model,
        (x, y),
        layers="attn",
        mode="zero",
        metric="kl",
        channels=[0, 3, 5],
        batch_size=6,
        resamples=10,
        progress=False,
    )
    got = {int(r["channel"]): r["value"] for r in res.rows if r["kind"] == "channel"}
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)


class SharedWidths(nn.Module):
    """One ReLU after convolutions of 8 and 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def test_channels_of_a_module_shared_by_layers_of_different_widths_are_refused() -> None:
    x, y = _xy()
    with pytest.raises(NetlensError, match="runs 2 times with 8, 16 channels"):
        netlens.ablate(SharedWidths().eval(), (x, y), layers="act", channels=True, progress=False)


def test_a_consumed_selector_is_refused_for_what_it_is() -> None:
    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.features(x), inplace=True).mean((2, 3)))

    x, y = _xy()
    with pytest.raises(NetlensError, match="features:consumed selects what the model reads"):
        netlens.ablate(Dense().eval(), (x, y), layers="features:consumed", progress=False)
