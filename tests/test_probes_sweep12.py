"""Probes under torch.compile, detach=False, mutated containers, aliasing outputs, self-calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _cloned(model: nn.Module, names: list[str], *args: object, grad_of=None):  # noqa: ANN001, ANN202
    """Reference: forward hooks storing a clone of every call's output (and, with ``grad_of``,
    the gradient of ``grad_of(output)`` w.r.t. it, through an identity node)."""
    mods = dict(model.named_modules())
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    live: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook_for(n: str):  # noqa: ANN202
        def hook(m: nn.Module, i: object, o: torch.Tensor) -> torch.Tensor | None:
            outs[n].append(o.detach().clone())
            if grad_of is None:
                return None
            o2 = o * 1.0
            o2.retain_grad()
            live[n].append(o2)
            return o2 * 1.0

        return hook

    handles = [mods[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        y = model(*args)
        if grad_of is not None:
            grad_of(y).backward()
            model.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
    return outs, {n: [t.grad for t in live[n]] for n in names}


class _ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 5)
        self.bn.running_mean.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.c(x))).mean((2, 3)))


@pytest.fixture
def dynamo_reset():  # noqa: ANN201
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("dynamo_reset")
def test_compiled_inside_probe_captures_every_forward() -> None:
    """torch.compile (aot_eager) inside an open probe: from the 2nd forward on the in-place
    ReLU's capture was the BN output before the ReLU (dynamo traced the probe's hooks)."""
    torch.manual_seed(0)
    m = _ConvBnRelu().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref, _ = _cloned(m, ["bn", "act"], x)
    with torch.no_grad(), netlens.probe(m, ["bn", "act"]) as p:
        cm = torch.compile(m, backend="aot_eager")
        for _ in range(3):
            p.clear()
            cm(x)
            assert torch.equal(p["act"].output, ref["act"][0])
            assert torch.equal(p["bn"].output, ref["bn"][0])


@pytest.mark.usefixtures("dynamo_reset")
def test_module_compile_grads_and_consumed() -> None:
    """nn.Module.compile() with grads=True and a ``:consumed`` selection: it crashed in dynamo."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.head = nn.Linear(8, 5)
            self.features[1].running_mean.uniform_(-0.5, 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.features(x), inplace=True)
            return self.head(out.mean((2, 3)))

    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    ref, ref_grad = _cloned(m, ["features"], x, grad_of=lambda y: y[:, 1].sum())
    m.compile(backend="aot_eager")
    with netlens.probe(m, ["features:consumed", "features"], grads=True) as p:
        for _ in range(2):
            p.clear()
            y = m(x)
            p.compute_grads(y[:, 1].sum())
            assert torch.equal(p["features"].output, ref["features"][0])
            assert torch.equal(p["features:consumed"].output, F.relu(ref["features"][0]))
            assert torch.allclose(p["features"].grad, ref_grad["features"][0], atol=1e-6)


def test_detach_false_keeps_graph_through_inplace() -> None:
    """detach=False: a BN capture that ReLU(inplace=True) overwrites had no grad_fn (a loss on
    it gave no gradient); the conv weight gradient now equals a cloning hook's."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3)
    )
    x = torch.randn(2, 3, 8, 8)
    feats: dict[str, torch.Tensor] = {}
    h = m[1].register_forward_hook(lambda mod, i, o: feats.__setitem__("bn", o.clone()))
    m(x)
    h.remove()
    feats["bn"].pow(2).mean().backward()
    ref = m[0].weight.grad.clone()
    with netlens.probe(m, ["1"], detach=False) as p:
        for _ in range(2):
            p.clear()
            m.zero_grad(set_to_none=True)
            m(x)
            p["1"].output.pow(2).mean().backward()
            assert torch.allclose(m[0].weight.grad, ref, atol=1e-7, rtol=1e-5)
    m.zero_grad(set_to_none=True)


@dataclasses.dataclass
class _Feats:
    feat: torch.Tensor
    aux: torch.Tensor


class _Back(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> object:
        a = self.c1(x)
        b = self.c2(a)
        if self.kind == "list":
            return [a, b]
        if self.kind == "dict":
            return {"a": a, "b": b}
        return _Feats(a, b)


class _Edits(nn.Module):
    """A parent that edits its child's returned container (and its tensors) in place."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.back = _Back(kind)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.back(x)
        if self.kind == "list":
            f[1].relu_()
            f.append(f[0] * 2)
            z = f[1]
        elif self.kind == "dict":
            f["b"] += 1
            f["extra"] = f["a"]
            z = f["b"]
        else:
            f.aux.relu_()
            f.feat = f.feat * 0
            z = f.aux
        return self.head(z.mean((2, 3)))


@pytest.mark.parametrize("grads", [False, True])
@pytest.mark.parametrize("kind", ["list", "dict", "dataclass"])
def test_container_capture_is_what_the_module_returned(kind: str, grads: bool) -> None:
    torch.manual_seed(0)
    m = _Edits(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = m.back.c1(x)
        b = m.back.c2(a)
    with torch.no_grad():
        y_plain = m(x)
    with netlens.probe(m, ["back"], grads=grads) as p:
        y = m(x)
    assert torch.equal(y, y_plain)
    o = p["back"].output
    if kind == "list":
        assert isinstance(o, list) and len(o) == 2
        got = o
    elif kind == "dict":
        assert set(o) == {"a", "b"}
        got = [o["a"], o["b"]]
    else:
        assert isinstance(o, _Feats)
        got = [o.feat, o.aux]
    assert torch.equal(got[0], a) and torch.equal(got[1], b)
    if grads:
        assert got[1].requires_grad  # still in the graph


class _Shortcut(nn.Module):
    def __init__(self, write: bool) -> None:
        super().__init__()
        self.write = write
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shortcut = nn.Identity()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skip = self.shortcut(x)  # skip *is* x
        if self.write:
            x.relu_()  # so skip is relu'd too
        return self.head((self.conv(x) + skip).mean((2, 3)))


def test_output_aliasing_input_keeps_model_and_capture() -> None:
    """grads=True on an nn.Identity whose input is later written in place: the logits changed
    by 0.17 and the capture by 1.53; now both are right and the gradient is refused."""
    torch.manual_seed(0)
    m = _Shortcut(write=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y_plain = m(x)
        ref, _ = _cloned(m, ["shortcut"], x)
    for grads in (False, True):
        with netlens.probe(m, ["shortcut"], grads=grads) as p:
            y = m(x)
            if grads:
                p.compute_grads(y[:, 0].sum())
        assert torch.equal(y, y_plain)
        assert torch.equal(p["shortcut"].output, ref["shortcut"][0])
        if grads:
            with pytest.raises(NetlensError, match="overwrites in place"):
                p["shortcut"].grad  # noqa: B018


def test_output_aliasing_input_gradient_when_not_written() -> None:
    torch.manual_seed(0)
    m = _Shortcut(write=False).eval()
    x = torch.randn(2, 3, 8, 8)
    ref, ref_grad = _cloned(m, ["shortcut"], x, grad_of=lambda y: y[:, 0].sum())
    with netlens.probe(m, ["shortcut"], grads=True) as p:
        y = m(x)
        p.compute_grads(y[:, 0].sum())
    assert torch.equal(p["shortcut"].output, ref["shortcut"][0])
    # the reference's identity node takes the skip branch only; the tensor feeds both branches
    assert p["shortcut"].grad.shape == ref_grad["shortcut"][0].shape
    with netlens.probe(m, ["stem"], grads=True) as q:
        y = m(x)
        q.compute_grads(y[:, 0].sum())
    assert torch.allclose(p["shortcut"].grad, q["stem"].grad, atol=1e-6)


class _MultiScale(nn.Module):
    """A forward that calls the model itself on a smaller input (multi-scale inference)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 5)
        self.bn.running_mean.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor, multi: bool = True) -> torch.Tensor:
        if multi:
            a = self.bn(self.c(x))
            small = self(F.avg_pool2d(x, 2), False)
            a.relu_()
            return self.head(a.mean((2, 3))) + small
        return self.head(self.act(self.c(x)).mean((2, 3)))


def test_model_calling_itself_is_one_forward() -> None:
    """The inner self(...) call restarted the forward: the bn capture came back relu'd (1.94
    off) and c@1 was refused although c ran twice."""
    torch.manual_seed(0)
    m = _MultiScale().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref, _ = _cloned(m, ["bn", "c"], x)
        with netlens.probe(m, ["bn", "c@0", "c@1", "c"]) as p:
            for _ in range(2):
                p.clear()
                m(x)
                assert torch.equal(p["bn"].output, ref["bn"][0])
                assert torch.equal(p["c@0"].output, ref["c"][0])
                assert torch.equal(p["c@1"].output, ref["c"][1])
                assert len(p["c"].outputs) == 2


def test_reentrant_checkpoint_says_so() -> None:
    """A probed layer inside checkpoint(use_reentrant=True) in a forward begun with grad on:
    compute_grads told the user to leave torch.no_grad(), which they never entered."""
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = checkpoint(self.block, self.stem(x), use_reentrant=True)
            return self.head(x.mean((2, 3)))

    m = Net().train()
    with netlens.probe(m, ["block.0"], grads=True) as p:
        y = m(torch.randn(2, 3, 8, 8))
        with pytest.raises(NetlensError, match="ran without gradients inside the model's forward"):
            p.compute_grads(y[:, 1].sum())
