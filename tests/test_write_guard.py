"""Captures stay right under in-place ops, on the guarded first forward and the fast later ones.

Every case runs several forwards in one probe and compares each capture with a reference
computed without hooks, and checks which mode ran (``p._guard.forwards``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

import netlens
from netlens.errors import NetlensError


def _x(seed: int, shape: tuple[int, ...] = (2, 4, 8, 8), scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Residual(nn.Module):
    """conv → bn → ReLU(inplace) → conv → bn → ``x += shortcut`` → ``F.relu_``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.scale = nn.Identity()
        for bn in (self.bn1, self.bn2):
            nn.init.normal_(bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.scale(self.bn2(self.conv2(y)))
        y += x
        y.mul_(0.5)
        y[:, 0] = 0
        return F.relu_(y)

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            c1 = self.conv1(x)
            b1 = self.bn1(c1)
            a = torch.relu(b1)
            c2 = self.conv2(a)
            b2 = self.bn2(c2)
        return {"conv1": c1, "bn1": b1, "act": a, "conv2": c2, "bn2": b2, "scale": b2}


def _check(p: netlens.Probe, ref: dict[str, torch.Tensor]) -> None:
    for name, want in ref.items():
        got = p[name].output
        assert torch.equal(got, want), f"{name} differs"


def test_inplace_writes_fast_forwards_match_reference():
    model = Residual().eval()
    xs = [_x(seed) for seed in range(4)]
    refs = [model.reference(x) for x in xs]  # (outside the probe: its hooks would count)
    with torch.no_grad(), netlens.probe(model, "*") as p:
        for x, ref in zip(xs, refs, strict=True):
            p.clear()
            model(x)
            _check(p, ref)
    assert p._guard.forwards == {"guarded": 1, "fast": 3}
    assert p["bn1"].outputs[0].min() < 0  # the in-place ReLU did not reach it


def test_fast_copies_only_what_is_overwritten():
    model = Residual().eval()
    with torch.no_grad(), netlens.probe(model, "*") as p:
        model(_x(0))
    plan = p._guard._plan
    assert plan is not None
    assert plan.copy == {("bn1", 0), ("bn2", 0), ("scale", 0)}


def test_timm_resnet18_every_module_over_fast_forwards(resnet18):
    named = [(n, m) for n, m in resnet18.named_modules() if n]
    xs = [_x(s, (2, 3, 48, 48)) for s in range(3)]
    refs = []
    for x in xs:
        ref: dict[str, torch.Tensor] = {}

        def keep(name: str, ref: dict = ref):  # noqa: ANN202
            def hook(m: nn.Module, i: object, o: torch.Tensor) -> None:
                ref.setdefault(name, o.detach().clone())

            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in named]
        with torch.no_grad():
            resnet18(x)
        for h in handles:
            h.remove()
        refs.append(ref)
    with torch.no_grad(), netlens.probe(resnet18, "*") as p:
        for x, ref in zip(xs, refs, strict=True):
            p.clear()
            resnet18(x)
            bad = [n for n, _ in named if not torch.equal(p[n].output, ref[n])]
            assert not bad
    assert p._guard.forwards["fast"] == 2


def test_copy_buffers_are_reused_only_when_released():
    model = Residual().eval()
    want = [model.reference(_x(s))["bn1"] for s in range(4)]
    with torch.no_grad(), netlens.probe(model, "bn1") as p:
        model(_x(0))  # guarded: learns that bn1 is overwritten
        p.clear()
        model(_x(1))  # fast: a copy
        held = p["bn1"].output
        p.clear()
        model(_x(2))  # fast: `held` is still referenced, so a new buffer
        assert torch.equal(held, want[1])
        assert held.data_ptr() != p["bn1"].output.data_ptr()
        first = p["bn1"].output.data_ptr()
        p.clear()
        model(_x(3))  # the previous copy was released: its buffer is reused
        assert p["bn1"].output.data_ptr() == first
        assert torch.equal(p["bn1"].output, want[3])


def test_new_input_shape_is_guarded_again():
    model = Residual().eval()
    xs = [_x(i, s) for i, s in enumerate([(2, 4, 8, 8), (2, 4, 8, 8), (1, 4, 6, 6), (1, 4, 6, 6)])]
    refs = [model.reference(x) for x in xs]
    with torch.no_grad(), netlens.probe(model, "*") as p:
        for x, ref in zip(xs, refs, strict=True):
            p.clear()
            model(x)
            _check(p, ref)
    assert p._guard.forwards == {"guarded": 2, "fast": 2}


class Branchy(nn.Module):
    """Which modules run (and what is overwritten) depends on the input's sign."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.BatchNorm2d(4)
        self.b = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.act(self.a(y)) if x.mean() > 0 else self.b(y) * 1.0
        return self.head(y)


def test_different_modules_called_leave_the_fast_path():
    model = Branchy().eval()
    pos, neg = _x(0).abs(), -_x(1).abs()
    with torch.no_grad():
        ref = {"pos": (model.conv(pos), model.a(model.conv(pos))), "neg": (model.conv(neg), None)}
        ref["neg"] = (ref["neg"][0], model.b(ref["neg"][0]))
    with torch.no_grad(), netlens.probe(model, "conv, a, b") as p:
        for x, kind in ((pos, "pos"), (pos, "pos"), (neg, "neg"), (pos, "pos")):
            p.clear()
            model(x)
            y, z = ref[kind]
            assert torch.equal(p["conv"].output, y)
            assert torch.equal(p["a" if kind == "pos" else "b"].output, z)
    # pos: learn; pos: fast; neg: leaves the plan (guarded from its first odd call); pos: relearn
    assert p._guard.forwards == {"guarded": 3, "fast": 1}


class ClampsLarge(nn.Module):
    """Overwrites the captured tensor only for some inputs: the first forward cannot know."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.amax() > 3:
            y.clamp_(max=3)
        return self.fc(y.mean((2, 3)))


def test_input_dependent_write_is_caught_and_rerun():
    model = ClampsLarge().eval()
    small, large = _x(0, scale=0.1), _x(1, scale=10.0)
    with torch.no_grad():
        want = model.conv(large)
        plain = model(large)
    assert want.amax() > 3
    with torch.no_grad(), netlens.probe(model, "conv, fc") as p:
        model(small)  # guarded: nothing overwritten, so the plan copies nothing
        p.clear()
        out = model(large)  # fast: the clamp destroys the alias → caught, re-run guarded
        assert torch.equal(p["conv"].output, want)
        assert torch.equal(out, plain) and len(p["conv"].outputs) == 1
        assert p._guard.distrust
        p.clear()
        model(large)  # from now on every forward is guarded
        assert torch.equal(p["conv"].output, want)
    assert p._guard.forwards == {"guarded": 3, "fast": 1}


def test_input_dependent_write_without_a_safe_rerun_is_an_error():
    model = ClampsLarge().eval()
    small, large = _x(0, scale=0.1), _x(1, scale=10.0)
    want = model.conv(large).detach()
    with netlens.probe(model, "conv") as p:  # grad mode on: a re-run is not harmless
        model(small)
        p.clear()
        model(large)
        with pytest.raises(NetlensError, match="overwritten by an in-place op") as err:
            _ = p["conv"].output
        assert "\n" not in str(err.value)
        p.clear()
        model(large)
        assert torch.equal(p["conv"].output, want)


def test_caller_may_modify_the_output_and_input_afterwards():
    model = nn.Sequential(nn.Identity(), nn.Conv2d(4, 4, 1), nn.Flatten()).eval()
    with torch.no_grad(), netlens.probe(model, "0, 2") as p:
        for seed in range(3):
            p.clear()
            x = _x(seed)
            x0 = x.clone()
            out = model(x)
            ref = out.clone()
            out.zero_()
            x.zero_()
            assert torch.equal(p["0"].output, x0) and torch.equal(p["2"].output, ref)
    assert p._guard.forwards["fast"] == 2


def test_inference_mode_is_guarded_every_time():
    model = Residual().eval()
    refs = [model.reference(_x(seed)) for seed in range(2)]
    with torch.inference_mode(), netlens.probe(model, "bn1, bn2") as p:
        for seed in range(2):
            p.clear()
            model(_x(seed))
            ref = refs[seed]
            assert torch.equal(p["bn1"].output, ref["bn1"])
            assert torch.equal(p["bn2"].output, ref["bn2"])
    assert p._guard.forwards == {"guarded": 2, "fast": 0}


def test_submodule_run_alone_is_guarded():
    outer = nn.Sequential(Residual()).eval()
    block = outer[0]
    x = _x(0)
    ref = block.reference(x)
    with torch.no_grad(), netlens.probe(outer, "0.bn1, 0.bn2") as p:
        block(x)  # not the probed model's forward: no plan, full guard
    assert torch.equal(p["0.bn1"].output, ref["bn1"])
    assert torch.equal(p["0.bn2"].output, ref["bn2"])
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert _get_current_dispatch_mode() is None


class _Strict(nn.Module):
    """Takes 8×8 inputs only; clips its features in place when they run high, and may add
    test-time noise (as MC-dropout-style models do)."""

    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        self.noisy = noisy
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.amax() > 3:  # data-dependent: the fast path's plan does not know it
            y.clamp_(max=3)
        if self.noisy:
            y = y + 0.01 * torch.randn_like(y)
        return self.fc(y.flatten(1))


def test_a_forward_that_raises_leaves_no_dispatch_mode_behind():
    """The user catches the model's own error and goes on: the probe's copy-on-write mode
    stayed on torch's stack, the next forward under FlopCounterMode failed, and a mode leaked
    past the probe's end."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _Strict().eval()
    with netlens.probe(model, "conv") as p:
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 10, 10))
        assert _get_current_dispatch_mode() is None
        with FlopCounterMode(display=False) as flops:
            model(torch.randn(1, 3, 8, 8))
        assert flops.get_total_flops() > 0 and p["conv"].outputs[-1].shape == (1, 4, 6, 6)
        with FlopCounterMode(display=False), pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 10, 10))  # raising inside the user's own mode
    assert _get_current_dispatch_mode() is None


def test_nested_probes_on_one_model_end_in_order():
    model = _Strict().eval()
    x = torch.randn(2, 3, 8, 8) * 0.1
    with torch.no_grad(), netlens.probe(model, "conv") as outer:
        with netlens.probe(model, "fc") as inner:
            out = model(x)
        assert torch.equal(inner["fc"].output, out)
    assert outer["conv"].output.shape == (2, 4, 6, 6)
    assert _get_current_dispatch_mode() is None


def test_a_rerun_draws_the_same_random_numbers():
    """A write the plan missed is recovered by running the forward again: with test-time noise
    that rerun drew other numbers and the forward raised "running it again gave another
    output"."""
    model = _Strict(noisy=True).eval()
    small, big = torch.randn(2, 3, 8, 8) * 0.01, torch.randn(2, 3, 8, 8) * 10
    with torch.no_grad():
        wants = [model.conv(x) for x in (small, small, big)]  # before the in-place clip
    with torch.no_grad(), netlens.probe(model, "conv") as p:
        for x, want in zip((small, small, big), wants, strict=True):
            p.clear()
            torch.manual_seed(1)
            model(x)
            assert torch.equal(p["conv"].output, want)


def test_a_compiled_model_is_refused_with_what_to_probe():
    compiled = torch.compile(_Strict().eval(), backend="eager")
    with pytest.raises(NetlensError, match=r"model._orig_mod"):
        netlens.probe(compiled, "conv")


class _Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        x = checkpoint(self.blocks, self.stem(x), use_reentrant=False)
        return self.head(x.mean((2, 3)))


def test_checkpointed_layers_are_captured_once_with_their_gradients():
    """Non-reentrant checkpointing re-runs its segment inside the backward, hooks included:
    each layer in it was captured twice, and ``.grad`` refused ("ran 2 times")."""
    torch.manual_seed(0)
    model, x = _Checkpointed().eval(), torch.randn(2, 3, 16, 16)
    acts = {}
    h = model.blocks[0].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    (want,) = torch.autograd.grad(model(x)[:, 0].sum(), [acts["a"]])
    h.remove()
    with netlens.probe(model, "blocks.0, blocks", grads=True) as p:
        p.compute_grads(model(x)[:, 0].sum())
    assert len(p["blocks.0"].outputs) == 1 and len(p["blocks"].outputs) == 1
    assert torch.allclose(p["blocks.0"].grad, want, atol=1e-6)


def test_a_dataclass_output_the_caller_rewrites_leaves_the_capture():
    """A model returning a dataclass (not a dict or tuple): the caller's ``out.logits.sigmoid_()``
    rewrote the captured head output (a dict output was protected already)."""
    import dataclasses

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> Out:
            return Out(self.head(x))

    model, x = Net().eval(), torch.randn(2, 4)
    with torch.no_grad(), netlens.probe(model, "head") as p:
        for _ in range(3):  # the first forward and the fast ones after it
            p.clear()
            out = model(x)
            want = out.logits.clone()
            out.logits.sigmoid_()
            assert torch.equal(p["head"].output, want)


def test_a_tuple_output_the_model_rewrites_later_is_kept_as_it_was():
    """A block returning ``(conv(x), skip(x))`` whose caller then runs ``out += skip`` and an
    in-place ReLU: the capture was the rewritten tensor (off by 2.3) and kept its graph."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.skip = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.conv(x), self.skip(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, skip = self.block(x)
            out += skip
            return torch.relu_(out).mean((2, 3))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model.block.conv(x)
    with netlens.probe(model, "block") as p:
        for _ in range(2):
            p.clear()
            model(x)
            got = p["block"].output[0]
            assert torch.equal(got, want) and not got.requires_grad


@pytest.mark.parametrize("grads", [False, True])
def test_a_capture_that_is_a_view_of_a_weight_survives_an_optimizer_step(grads: bool):
    """A learned position embedding returned as ``self.pos.expand(...)``: after ``opt.step()``
    the capture showed the new weights (it was the weight's own storage)."""
    import torch.nn.functional as F

    class Pos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 5, 16) * 0.02)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pos.expand(x.shape[0], -1, -1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.pos_embed, self.head = nn.Linear(8, 16), Pos(), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head((self.embed(x) + self.pos_embed(x)).mean(1))

    torch.manual_seed(0)
    model, x, y = Net(), torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    want = model.pos_embed.pos.detach().clone().expand(4, -1, -1)
    with netlens.probe(model, "pos_embed", grads=grads) as p:
        loss = F.cross_entropy(model(x), y)
        if grads:
            p.compute_grads(loss, retain_graph=True)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(model.pos_embed.pos.detach().expand(4, -1, -1), want)  # it moved
    assert torch.equal(p["pos_embed"].output.detach(), want)


def test_gradients_of_a_tuple_returning_layer_are_refused_in_one_line():
    """A module returning ``(tensor, extra)`` (Hugging Face attention): probed alone,
    compute_grads said "no probed layer ran with gradients enabled"; beside another layer its
    ``.grad`` was None without a word."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y, y.mean()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair, self.fc = Pair(), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pair(x)[0].mean((2, 3)))

    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    with netlens.probe(model, "pair", grads=True) as p:
        with pytest.raises(NetlensError, match="'pair' returns a tuple.*probe the module inside"):
            p.compute_grads(model(x)[0, 0])
    with netlens.probe(model, "pair, pair.conv", grads=True) as p:
        p.compute_grads(model(x)[0, 0])
        assert p["pair.conv"].grad.shape == (1, 4, 6, 6)
        with pytest.raises(NetlensError, match="'pair' returns a tuple"):
            _ = p["pair"].grad
