"""``stats``: which layers it measures and what it does when a capture is destroyed.

- A pattern (``type:Conv2d``, a glob) that also matches modules the eval forward never calls
  (auxiliary heads, empty branches) was refused; it leaves them out with a warning now, as the
  default does. A layer named, or a selection none of whose layers run, is still refused.
- A model with its own forward hook and an input-dependent in-place write failed with "run
  this forward again"; stats runs that batch again itself.
- A CNN with functional hidden activations (``F.relu``) and an ``nn.Sigmoid`` output or SE gates
  was measured at the sigmoids only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netlens import Lens, Preprocess
from netlens.analyzers.stats import default_stats_layers
from netlens.errors import AnalyzerError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _reference(model: nn.Module, name: str, batches: list[torch.Tensor]) -> dict[str, float]:
    """Plain-hook statistics of ``name``'s output, cloned at capture time."""
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: seen.append(o.detach().clone())
    )
    with torch.no_grad():
        for b in batches:
            model(b.clone())
    hook.remove()
    t = torch.cat(seen).double()
    return {
        "mean": t.mean().item(),
        "std": t.std(unbiased=False).item(),
        "min": t.min().item(),
        "max": t.max().item(),
        "near_zero": (t <= 0).double().mean().item(),
    }


def _check(row: dict, ref: dict[str, float]) -> None:
    for k, v in ref.items():
        assert row[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def _data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long)


class WithAux(nn.Module):
    """Two convs that run and an auxiliary head (conv + linear) that the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3))
        self.aux = nn.Sequential(nn.Conv2d(6, 2, 1), nn.Flatten(), nn.Linear(2, 3))
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def test_a_pattern_leaves_out_the_layers_the_forward_does_not_call() -> None:
    torch.manual_seed(0)
    model = WithAux().eval()
    lens = Lens(model, Preprocess(size=(16, 16)))
    x, y = _data(4, 16)
    for sel in ("type:Conv2d", "body.*,aux.*"):
        res = lens.run("stats", (x, y), layers=sel, batch_size=2)
        rows = [r["layer"] for r in res.table]
        assert rows == (
            ["body.0", "body.2"] if sel == "type:Conv2d" else ["body.0", "body.1", "body.2"]
        )
        assert "did not run in the model's forward" in res.meta["warnings"][0]
        assert "'aux.0'" in res.meta["warnings"][0]
        _check(res.table[0], _reference(model, "body.0", list(x.split(2))))
    with pytest.raises(AnalyzerError, match="'aux.0' did not run in the model's forward"):
        lens.run("stats", (x, y), layers="body.0,aux.0")  # named: refused
    with pytest.raises(AnalyzerError, match="none of the layers picked did") as err:
        lens.run("stats", (x, y), layers="aux.*")  # a pattern none of whose layers run
    assert "\n" not in str(err.value)


class CondWrite(nn.Module):
    """Writes into conv's output in place only for bright batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.mean() > 5:
            y.relu_()
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("user_hook", [False, True])
def test_an_unforeseen_in_place_write_is_measured_by_running_the_batch_again(user_hook) -> None:
    torch.manual_seed(0)
    model = CondWrite().eval()
    calls: list[int] = []
    if user_hook:  # a hook of the user's own: the probe cannot re-run the forward itself
        model.fc.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    x, y = _data(4, 8)
    x[2:] += 10  # the second batch is bright: the write happens only there
    ref = _reference(model, "conv", list(x.split(2)))
    calls.clear()
    lens = Lens(model, Preprocess(size=(8, 8)))
    res = lens.run("stats", (x, y), layers="conv", batch_size=2)
    _check(res.table[0], ref)
    assert res.table[0]["values"] == 4 * 8 * 8 * 8
    if user_hook:
        assert model.fc._forward_hooks and len(model.conv._forward_hooks) == 0


class FunctionalBody(nn.Module):
    """F.relu between convs; ``head``: an nn.Sigmoid output, SE gates or one nn.ReLU in the head."""

    def __init__(self, head: str) -> None:
        super().__init__()
        ch = [3, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 16]
        self.head = head
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(ch[:-1], ch[1:], strict=True)
        )
        self.gates = nn.ModuleList(nn.Sigmoid() for _ in ch[1:]) if head == "se" else None
        self.fc = nn.Linear(16, 16)
        self.out = nn.Sigmoid() if head == "sigmoid" else nn.ReLU() if head == "relu" else None
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, c in enumerate(self.convs):
            x = F.relu(c(x))
            if self.gates is not None:
                x = x * self.gates[i](x.mean((2, 3), keepdim=True))
        x = self.fc(x.mean((2, 3)))
        if self.head == "relu":
            return self.fc2(self.out(x))
        x = self.fc2(x)
        return self.out(x) if self.head == "sigmoid" else x


@pytest.mark.parametrize("head", ["sigmoid", "se", "relu"])
def test_default_layers_cover_a_body_of_functional_activations(head) -> None:
    torch.manual_seed(0)
    model = FunctionalBody(head).eval()
    lens = Lens(model, Preprocess(size=(12, 12)))
    x, y = _data(3, 12)
    res = lens.run("stats", (x, y))
    rows = [r["layer"] for r in res.table]
    assert [f"convs.{i}" for i in range(11)] + ["fc", "fc2"] == [
        r for r in rows if "conv" in r or "fc" in r
    ]
    assert "every Conv2d and Linear" in res.meta["layers_rule"]
    if head == "relu":  # one ReLU module for 13 weight-layer calls
        assert "run 1 of 13 Conv2d/Linear calls" in res.meta["layers_rule"]
        assert "out" in rows
    _check(res.table[rows.index("convs.3")], _reference(model, "convs.3", [x]))


def test_the_default_stays_the_activation_modules_where_they_cover_the_body() -> None:
    from netlens.analyzers.stats import default_stats_rule

    class Shared(nn.Module):  # one ReLU module called after every conv, and a sigmoid output
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.Sequential(*(nn.Conv2d(3, 3, 3, padding=1) for _ in range(12)))
            self.relu, self.out = nn.ReLU(), nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for c in self.convs:
                x = self.relu(c(x))
            return self.out(x.mean((1, 2, 3)))

    model = Shared().eval()
    picked, rule = default_stats_rule(model, torch.zeros(1, 3, 8, 8))
    assert picked == ["relu", "out"] and rule.startswith("the activation modules")
    res = Lens(model, Preprocess(size=(8, 8))).run("stats", _data(2, 8))
    assert [r["layer"] for r in res.table][:2] == ["relu@0", "relu@1"]
    assert res.meta["layers_rule"].startswith("the activation modules")
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Sigmoid())
    assert default_stats_layers(seq) == ["1", "3"]
    gates_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid())
    assert default_stats_layers(gates_only) == ["0", "1"]
