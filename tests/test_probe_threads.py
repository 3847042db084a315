"""Probes, hook_call and the dry forward act only on forwards run by the thread that opened them.

A web service serves ``model(x)`` in one thread while another explains the same model: the
serving thread's forwards must run untouched (no error raised into it, the same output) and the
explaining thread must capture exactly its own forwards. The forwards are ordered with Events
and Barriers: a :class:`Gate` module holds the owning thread's forward halfway while the other
thread runs a whole forward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import netlens
from netlens.call_hooks import hook_call
from netlens.errors import NetlensError
from netlens.layers import trace_calls

pytestmark = [pytest.mark.usefixtures("one_thread")]

WAIT = 20  # seconds: only a deadlocked test waits that long


class Gate(nn.Module):
    """Identity; in the thread ``hold_in`` it calls ``hold()`` (once) before passing on."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_in: int | None = None
        self.hold: Callable[[], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hold is not None and threading.get_ident() == self.hold_in:
            hold, self.hold = self.hold, None
            hold()
        return x


class Net(nn.Module):
    """A small CNN with in-place ops after the probed layers (so the write guard has work)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.gate = Gate()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.gate(y)
        z = self.conv2(y)
        z += y  # overwrites conv2's output in place
        return self.head(self.act2(z).mean((2, 3)))


@pytest.fixture
def net() -> Net:
    return Net().eval()


def _images(seed: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _reference(model: nn.Module, x: torch.Tensor, layer: str, grad: bool = False) -> torch.Tensor:
    """The layer's output, as a plain cloning forward hook sees it (one thread, no netlens)."""
    got: list[torch.Tensor] = []
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.append(o.clone()))
    try:
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        h.remove()
    (out,) = got
    return out.detach()


class Server:
    """Runs ``model(x)`` under no_grad in a thread of its own, when asked: the serving thread."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.outputs: list[torch.Tensor] = []
        self.errors: list[BaseException] = []
        self._go = threading.Event()
        self._done = threading.Event()
        self._quit = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            self._go.wait(WAIT)
            self._go.clear()
            if self._quit:
                return
            try:
                with torch.no_grad():
                    out = self.model(self.x)
                self.outputs.append(out.clone())
                assert not out.requires_grad
            except BaseException as exc:  # noqa: BLE001 - recorded for the test to check
                self.errors.append(exc)
            self._done.set()

    def serve_one(self) -> None:
        """One whole forward in the serving thread; returns when it has ended."""
        self._done.clear()
        self._go.set()
        assert self._done.wait(WAIT), "the serving thread's forward did not end"

    def close(self) -> None:
        self._quit = True
        self._go.set()
        self._thread.join(WAIT)


def _hold_midway(model: Net, during: Callable[[], None]) -> None:
    """The calling thread's next forward stops at the gate (after act1) and runs ``during``."""
    model.gate.hold_in = threading.get_ident()
    model.gate.hold = during


@pytest.mark.parametrize("grads", [False, True])
def test_probe_ignores_a_serving_thread(net: Net, grads: bool) -> None:
    """A serving thread's forwards, halfway through the probed one and between forwards, are
    neither captured nor disturbed (old code: the probe held 3 outputs per layer, or raised)."""
    x, other = _images(1), _images(2, n=2)
    with torch.no_grad():
        served = net(other).clone()
    want = {name: _reference(net, x, name, grads) for name in ("bn1", "conv2")}
    server = Server(net, other)
    try:
        with netlens.probe(net, ["bn1", "conv2"], grads=grads) as p:
            server.serve_one()  # before the probed forward
            _hold_midway(net, server.serve_one)  # during it (the guard's dispatch mode is on)
            with torch.set_grad_enabled(grads):
                logits = net(x)
            server.serve_one()  # after it, the probe still open
            if grads:
                p.compute_grads(logits[:, 2].sum())
            for name, ref in want.items():
                assert len(p[name].outputs) == 1
                assert torch.equal(p[name].output, ref)
            if grads:
                assert p["conv2"].grad.shape == want["conv2"].shape
    finally:
        server.close()
    assert not server.errors, server.errors
    assert len(server.outputs) == 3
    for out in server.outputs:
        assert torch.equal(out, served)


def test_consumed_capture_ignores_a_serving_thread(net: Net) -> None:
    """``conv2:consumed`` (its output after ``z += y`` and the in-place act2, as the mean reads
    it: act2's output) with a serving forward
    halfway through: the torch function mode that follows it stays in the probe's thread (old
    code: the serving thread's forward entered it there and was captured)."""
    x, other = _images(8), _images(9, n=2)
    with torch.no_grad():
        served = net(other).clone()
    got: list[torch.Tensor] = []
    h = net.act2.register_forward_hook(lambda m, a, o: got.append(o.clone()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        h.remove()
    server = Server(net, other)
    try:
        with netlens.probe(net, ["conv2:consumed"]) as p, torch.no_grad():
            _hold_midway(net, server.serve_one)
            net(x)
            server.serve_one()
            outs = [o.clone() for o in p["conv2:consumed"].outputs]
    finally:
        server.close()
    assert not server.errors, server.errors
    assert len(outs) == 1 and torch.equal(outs[0], got[0])
    assert len(server.outputs) == 2
    for o in server.outputs:
        assert torch.equal(o, served)


def test_two_threads_two_probes_each_capture_their_own(net: Net) -> None:
    """Two threads each open a probe of the same model and run one forward each, in turn
    (old code: each probe held both outputs; thread 1's first one was thread 0's)."""
    xs = [_images(10), _images(11)]
    want = [_reference(net, x, "conv2") for x in xs]
    assert not torch.equal(want[0], want[1])
    bar = threading.Barrier(2, timeout=WAIT)
    got: dict[int, Any] = {}

    def worker(k: int) -> None:
        try:
            with netlens.probe(net, ["conv2"]) as p:
                bar.wait()  # both probes open
                if k == 1:
                    bar.wait()  # thread 0's forward first
                with torch.no_grad():
                    net(xs[k])
                if k == 0:
                    bar.wait()
                bar.wait()  # both forwards done, both probes still open
                got[k] = [o.clone() for o in p["conv2"].outputs]
        except BaseException as exc:  # noqa: BLE001 - checked below
            got[k] = exc
            bar.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    for k in (0, 1):
        assert isinstance(got[k], list), got[k]
        assert len(got[k]) == 1
        assert torch.equal(got[k][0], want[k])


def test_hook_call_leaves_other_threads_forwards_alone(net: Net) -> None:
    """hook_call zeroes act1 only in the thread that entered it; the serving thread's forward
    halfway through it gets the plain output (old code: the serving forward was zeroed too)."""
    x, other = _images(3), _images(4, n=2)
    with torch.no_grad():
        served = net(other).clone()
        zeroed = net.head(net.act2(net.conv2(torch.zeros(1, 8, 32, 32))).mean((2, 3)))
    server = Server(net, other)
    try:
        with hook_call(net, "act1", torch.zeros_like), torch.no_grad():
            server.serve_one()
            _hold_midway(net, server.serve_one)
            out = net(x)
    finally:
        server.close()
    assert not server.errors, server.errors
    assert torch.allclose(out, zeroed, atol=1e-6)
    assert len(server.outputs) == 2
    for o in server.outputs:
        assert torch.equal(o, served)


def test_dry_forward_ignores_a_serving_thread(net: Net) -> None:
    """The dry forward behind ``@-k`` and ``auto`` records only its own calls (old code: the
    serving forward's calls were added to the trace)."""
    x, other = _images(5), _images(6, n=2)
    want = [(c.name, c.call) for c in trace_calls(net, x)]
    with torch.no_grad():
        served = net(other).clone()
    server = Server(net, other)
    try:
        _hold_midway(net, server.serve_one)
        got = [(c.name, c.call) for c in trace_calls(net, x)]
    finally:
        server.close()
    assert not server.errors, server.errors
    assert got == want
    assert len(server.outputs) == 1 and torch.equal(server.outputs[0], served)


def test_probe_closed_in_another_thread_says_so(net: Net) -> None:
    """A probe whose guard is on (a sub-module run on its own) closed by another thread: one
    line that says to close it in its own thread (old code: a misleading 'dispatch mode')."""
    p = netlens.probe(net, ["bn1"]).__enter__()
    try:
        net.bn1(net.conv1(_images(7)))  # outside a forward of the model: guarded
        err: list[BaseException] = []

        def close() -> None:
            try:
                p.__exit__(None, None, None)
            except BaseException as exc:  # noqa: BLE001 - checked below
                err.append(exc)

        t = threading.Thread(target=close)
        t.start()
        t.join(WAIT)
        assert len(err) == 1 and isinstance(err[0], NetlensError)
        assert "another thread" in str(err[0])
    finally:
        p.__exit__(None, None, None)  # in its own thread: leaves torch's mode stack clean
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert _get_current_dispatch_mode() is None


def test_cam_leaves_a_serving_threads_grad_mode_alone() -> None:
    """A gradient CAM's hook that turns gradients on (from the explained layer on) did so in a
    serving thread's `no_grad` forward too."""
    gate_in, gate_go, stop = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            main = threading.current_thread() is threading.main_thread()
            if main and torch.is_grad_enabled() and x.requires_grad:
                gate_go.clear()
                gate_in.set()
                gate_go.wait(10)
            if not main:
                seen.append(torch.is_grad_enabled())
            return x

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        Gate(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()

    def serve() -> None:
        while not stop.is_set():
            if gate_in.wait(0.2):
                gate_in.clear()
                with torch.no_grad():
                    model(torch.rand(1, 3, 16, 16))
                gate_go.set()

    server = threading.Thread(target=serve)
    server.start()
    try:
        netlens.Lens(model).cam(torch.rand(1, 3, 16, 16), layer="1", method="gradcam")
    finally:
        stop.set()
        server.join()
    assert seen and not any(seen)
