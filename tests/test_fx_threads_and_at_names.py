"""netlens' torch.fx traces leave other threads' plain forwards alone (torch's tracer patches
``nn.Module.__call__`` for the whole process while it traces), and ablation rows of modules
named with ``@`` (onnx2torch's ``Conv@0``, ``Div@17``) are made without parsing their keys."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn

import netlens
from netlens.analyzers.ablation.residual import trace_block
from netlens.analyzers.ablation.tracing import trace_units
from netlens.analyzers.cam_base import _fused_copy
from netlens.fx_trace import Tracer, symbolic_trace

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _unrelated() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model netlens never sees, its input and its output, as a serving thread has them."""
    torch.manual_seed(5)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    inp = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        return m, inp, m(inp)


class _Serving:
    """Plain forwards of the unrelated model: ``once()`` runs one in another thread and waits
    for it; ``background()`` keeps running them until the block ends. Errors and outputs that
    differ from the model's own are kept."""

    def __init__(self) -> None:
        self.model, self.inp, self.ref = _unrelated()
        self.errors: list[str] = []
        self.runs = 0

    def _forward(self) -> None:
        try:
            with torch.no_grad():
                out = self.model(self.inp)
            if not torch.equal(out, self.ref):
                self.errors.append("another output")
            self.runs += 1
        except Exception as exc:  # noqa: BLE001 - what the other thread sees, kept for the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def __deepcopy__(self, memo: dict) -> _Serving:
        return self  # a model's deep copy (the folded one) serves alongside the same thread

    def once(self) -> None:
        t = threading.Thread(target=self._forward)
        t.start()
        t.join()

    def background(self, work: Callable[[], object]) -> object:
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                self._forward()
                time.sleep(0)

        t = threading.Thread(target=serve)
        t.start()
        try:
            return work()
        finally:
            stop.set()
            t.join()


class _ServesWhileTraced(nn.Module):
    """A block whose forward, while it is being traced, has another thread run a plain forward
    of an unrelated model (deterministically inside the trace)."""

    def __init__(self, serving: _Serving | None, channels: int = 4) -> None:
        super().__init__()
        self.serving = serving
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, fx.Proxy) and self.serving is not None:
            self.serving.once()
        return torch.relu(x + self.bn(self.conv(x)))


def _model(serving: _Serving | None) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        _ServesWhileTraced(serving),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    for bn in (m[1], m[2].bn):  # running statistics that folding changes visibly
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_each_trace_leaves_another_threads_forward_alone() -> None:
    serving = _Serving()
    model = _model(serving)
    x = torch.randn(2, 3, 16, 16)
    traced = trace_units(model, ["1", "2.conv"])
    assert traced.graph is not None and traced.error is None
    assert trace_block(model[2]) is not None
    assert isinstance(symbolic_trace(model), fx.GraphModule)
    with torch.no_grad():
        fast = _fused_copy(model, x, model, lambda out: out)
    assert fast is not None  # the conv+BN-folded copy, checked against the model
    assert serving.errors == [] and serving.runs >= 4


def test_traced_arch_recognition_leaves_another_thread_alone() -> None:
    """A pickled GraphModule's architecture is told by tracing candidates: meanwhile another
    thread's forward runs as it would."""
    from netlens.models.traced import _same, _structure

    serving = _Serving()
    model = _model(None)
    own = _structure(fx.symbolic_trace(model))
    model[2].serving = serving
    assert _same(own, model)
    assert serving.errors == [] and serving.runs == 1


def test_traces_are_torchs() -> None:
    """The graphs are the ones torch's own tracer makes with the same leaves."""
    serving = _Serving()
    model = _model(serving)

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name in {"1", "2.conv"} or super().is_leaf_module(m, name)

    ours = trace_units(model, ["1", "2.conv"]).graph
    assert ours is not None and ours.code == fx.GraphModule(model, Leaves().trace(model)).code
    assert symbolic_trace(model).code == fx.symbolic_trace(model).code
    assert type(symbolic_trace(model)).__mro__[1:] == type(fx.symbolic_trace(model)).__mro__[1:]


def test_subclass_hooks_see_no_other_thread() -> None:
    """A tracer's own call_module (the unit tracer's failure bookkeeping) is never called for
    another thread's modules."""
    serving = _Serving()
    seen: list[str] = []

    class Counting(Tracer):
        def call_module(self, m, forward, args, kwargs):  # noqa: ANN001, ANN201
            seen.append(type(m).__name__)
            return super().call_module(m, forward, args, kwargs)

    Counting().trace(_model(serving))
    assert serving.errors == [] and serving.runs == 1
    assert seen == ["Conv2d", "BatchNorm2d", "_ServesWhileTraced", "Conv2d", "BatchNorm2d"] + [
        "AdaptiveAvgPool2d",
        "Flatten",
        "Linear",
    ]


def test_ablate_and_score_cam_with_a_serving_thread() -> None:
    """lens.ablate (block skips traced, the model traced) and Score-CAM's folded copy, with
    plain forwards running in another thread the whole time: no error there, same results."""
    serving = _Serving()
    model = _model(serving)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, 16, 16, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    kw = {"metric": "prob", "resamples": 20}
    quiet = netlens.ablate(model, (x, y), **kw)
    busy = serving.background(lambda: netlens.ablate(model, (x, y), **kw))
    assert busy.rows == quiet.rows and busy.meta["paths"] == {"2": "cached"}
    ctx = _fused_copy(model, x[:2], model, lambda out: out)
    busy_copy = serving.background(lambda: _fused_copy(model, x[:2], model, lambda out: out))
    assert ctx is not None and busy_copy is not None
    with torch.no_grad():
        assert torch.equal(busy_copy(x), ctx(x))
    assert serving.errors == [] and serving.runs > 0


def _named(sep: str) -> nn.Module:
    """onnx2torch's naming (``Conv@0``) or the same model with ``_``."""
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module(f"Conv{sep}0", nn.Conv2d(3, 6, 3, padding=1))
    m.add_module(f"Relu{sep}1", nn.ReLU())
    m.add_module(f"Conv{sep}2", nn.Conv2d(6, 6, 3, padding=1))
    m.add_module(f"Relu{sep}3", nn.ReLU())
    m.add_module(f"Pool{sep}4", nn.AdaptiveAvgPool2d(1))
    m.add_module(f"Flatten{sep}5", nn.Flatten())
    m.add_module(f"Gemm{sep}6", nn.Linear(6, 3))
    return m.eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _renamed(rows: list[dict]) -> list[dict]:
    return [
        {k: v.replace("@", "_") if isinstance(v, str) else v for k, v in r.items()} for r in rows
    ]


@pytest.mark.parametrize("channels", [False, True])
def test_rows_of_modules_named_with_at(channels: bool) -> None:
    x, y = _data()
    kw = {"metric": "prob", "resamples": 20, "points": 3, "mode": "zero"}
    layers = "Conv{0}2" if channels else "Conv{0}0,Conv{0}2"
    at = netlens.ablate(_named("@"), (x, y), layers=layers.format("@"), channels=channels, **kw)
    plain = netlens.ablate(_named("_"), (x, y), layers=layers.format("_"), channels=channels, **kw)
    assert at.rows and _renamed(at.rows) == plain.rows
    assert at.arrays.keys() == plain.arrays.keys()
    for k, v in plain.arrays.items():
        np.testing.assert_array_equal(at.arrays[k], v, err_msg=k)
    if channels:
        assert [r["layer"] for r in at.rows] == ["Conv@2"] * 6
        assert [r["channel"] for r in at.rows] == list(range(6))
    else:
        assert [(r["layer"], r["kind"]) for r in at.rows] == [
            ("Conv@0", "layer"),
            ("Conv@2", "layer"),
        ]


def test_one_channel_of_an_at_named_module_against_a_hook_loop() -> None:
    model, (x, y) = _named("@"), _data()
    res = netlens.ablate(
        model, (x, y), layers="Conv@2", channels=[3], metric="prob", mode="zero", resamples=20
    )
    with torch.no_grad():
        base = model(x).argmax(1)

        def zero(m: nn.Module, i: tuple, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, 3] = 0
            return out

        h = model.get_submodule("Conv@2").register_forward_hook(zero)
        try:
            probs = model(x).softmax(1)
        finally:
            h.remove()
    ref = float(probs[torch.arange(len(x)), base].mean())
    (row,) = [r for r in res.rows if r["kind"] == "channel"]
    assert (row["key"], row["layer"], row["channel"]) == ("Conv@2#c3", "Conv@2", 3)
    assert row["value"] == pytest.approx(ref, abs=1e-6)
