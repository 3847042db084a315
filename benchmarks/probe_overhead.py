"""Probe overhead on timm resnet18 (CPU): ratios against baselines measured in the same run.

For each batch size, the variants run interleaved (rounds × repeats, so machine noise hits all
alike) and the median per forward is reported:

- ``plain``: the bare forward;
- ``detach``: fastai-style SaveFeatures hooks on all 93 modules storing ``o.detach()`` (cheap but
  wrong: in-place ops after a hook change what it stored);
- ``clone``: the same storing ``o.detach().clone()`` (correct, copies every output);
- ``oracle``: a hand-written floor for a correct capture: copies exactly the outputs an in-place
  op later overwrites (known from a first forward), once per tensor, into buffers reused across
  forwards, and detaches the rest (no checks, no fallback: it is only right for this model and
  input);
- ``probe``: ``netlens.probe(model, "*")`` reused across forwards (``clear()`` between), i.e. the
  steady state after its first, guarded forward; ``probe-first``: a fresh probe per forward (every
  forward is a guarded, learning one);

Each variant runs one untimed forward before its timed ones in every round (warm caches; a
reused probe re-entered after ``remove()`` refills its copy buffers there).
- ``late plain`` / ``late detach`` / ``late probe``: the same for one late layer (``layer4.1.bn2``,
  overwritten by ``+= shortcut`` and the in-place ReLU), reused probe.

With one thread (``--threads 1``) the clock is the thread's CPU time, which a busy machine
barely disturbs; otherwise wall time. The load average is printed before and after.

    python benchmarks/probe_overhead.py [--batch 1 8 32] [--size 224] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

import netlens

LATE = "layer4.1.bn2"


def hooks(modules: list[nn.Module], store: Callable[[torch.Tensor], object]) -> list:
    return [m.register_forward_hook(lambda m, i, o: store(o)) for m in modules]


def save_features(model: nn.Module, x: torch.Tensor, modules: list[nn.Module], keep) -> Callable:  # noqa: ANN001
    def run() -> None:
        kept: list[object] = []
        handles = hooks(modules, lambda o: kept.append(keep(o)))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()

    return run


def overwritten(model: nn.Module, x: torch.Tensor) -> set[nn.Module]:
    """Modules whose output an in-place op changes later in the forward (one dry run)."""
    seen: list[tuple[nn.Module, torch.Tensor, int]] = []
    handles = [
        m.register_forward_hook(lambda m, i, o: seen.append((m, o, o._version)))
        for m in model.modules()
        if m is not model
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {m for m, o, v in seen if o._version != v}


def oracle(model: nn.Module, x: torch.Tensor, modules: list[nn.Module]) -> Callable:
    """The floor for a correct capture: copy exactly what is overwritten, once per tensor, into
    buffers kept from the last forward (fresh memory costs page faults); alias the rest."""
    copy = overwritten(model, x)
    buffers: dict[nn.Module, torch.Tensor] = {}

    def run() -> None:
        kept: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        out: list[torch.Tensor] = []

        def hook(m: nn.Module, i: object, o: torch.Tensor) -> None:
            hit = kept.get(id(o))
            if hit is not None and hit[0] is o and hit[1] == o._version:
                out.append(hit[2])
                return
            if m in copy:
                buf = buffers.get(m)
                if buf is None or buf.shape != o.shape:
                    buf = buffers[m] = torch.empty_like(o)
                stored = buf.copy_(o)
            else:
                stored = o.detach()
            kept[id(o)] = (o, o._version, stored)
            out.append(stored)

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()

    return run


Run = tuple[Callable[[], None], "netlens.Probe | None"]


def variants(model: nn.Module, x: torch.Tensor) -> dict[str, Run]:
    """name → (one forward, the reused probe whose hooks are entered around it, if any)."""
    modules = [m for name, m in model.named_modules() if name]
    late = [dict(model.named_modules())[LATE]]
    steady, late_steady = netlens.probe(model, "*"), netlens.probe(model, LATE)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def reused(p: netlens.Probe) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(x)
            p.clear()

        return run

    def first() -> None:
        with torch.no_grad(), netlens.probe(model, "*"):
            model(x)

    return {
        "plain": (plain, None),
        "detach": (save_features(model, x, modules, lambda o: o.detach()), None),
        "clone": (save_features(model, x, modules, lambda o: o.detach().clone()), None),
        "oracle": (oracle(model, x, modules), None),
        "probe": (reused(steady), steady),
        "probe-first": (first, None),
        "late plain": (plain, None),
        "late detach": (save_features(model, x, late, lambda o: o.detach()), None),
        "late probe": (reused(late_steady), late_steady),
    }


def check(model: nn.Module, x: torch.Tensor) -> None:
    """The probe stores what a cloning SaveFeatures stores (fast forwards included)."""
    ref: dict[str, torch.Tensor] = {}
    named = [(n, m) for n, m in model.named_modules() if n]

    def keep(name: str) -> Callable:
        def hook(m: nn.Module, i: object, o: torch.Tensor) -> None:  # None: output unchanged
            ref.setdefault(name, o.detach().clone())

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in named]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    with torch.no_grad(), netlens.probe(model, "*") as p:
        for _ in range(3):
            p.clear()
            model(x)
        assert p._guard.forwards == {"guarded": 1, "fast": 2}, p._guard.forwards
        bad = [n for n, _ in named if not torch.equal(p[n].output, ref[n])]
    assert not bad, f"probe differs from clone on {bad}"


def clock(threads: int) -> Callable[[], float]:
    return time.thread_time if threads == 1 else time.perf_counter


def measure(batch: int, size: int, rounds: int, repeat: int, tick: Callable) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(batch, 3, size, size)
    check(model, x[:2])
    runs = variants(model, x)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds + 1):
        for name, (fn, reused) in runs.items():
            if reused is not None:
                reused.__enter__()  # a probe keeps what it learnt across exits
            try:
                fn()  # untimed: caches warm, a reused probe's copy buffers allocated
                t = tick()
                for _ in range(repeat):
                    fn()
                elapsed = (tick() - t) / repeat
            finally:
                if reused is not None:
                    reused.remove()
            if r:  # round 0 only warms up
                times[name].append(elapsed)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    tick = clock(threads)
    load0 = os.getloadavg()
    print(
        f"timm resnet18, {args.size}², all 93 modules / one late layer ({LATE}); {threads} "
        f"thread(s), {'thread CPU' if threads == 1 else 'wall'} time, median of {args.rounds} "
        f"rounds × {args.repeat}; load average {load0[0]:.2f}"
    )
    summary = []
    for batch in args.batch:
        med = measure(batch, args.size, args.rounds, args.repeat, tick)
        print(f"\nbatch {batch}:")
        for name, t in med.items():
            print(f"  {name:12s} {t * 1e3:9.1f} ms")
        ratios = {
            "probe/plain": med["probe"] / med["plain"],
            "probe/detach": med["probe"] / med["detach"],
            "probe/clone": med["probe"] / med["clone"],
            "probe/oracle": med["probe"] / med["oracle"],
            "first/detach": med["probe-first"] / med["detach"],
            "late/plain": med["late probe"] / med["late plain"],
            "late/detach": med["late probe"] / med["late detach"],
        }
        for k, v in ratios.items():
            print(f"  {k:14s} {v:.3f}")
        summary.append(f"b{batch} " + " ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    load1 = os.getloadavg()
    print(f"\nload average at the end {load1[0]:.2f}")
    print(
        "SUMMARY probe_overhead: " + " | ".join(summary) + f" | load {load0[0]:.1f}->{load1[0]:.1f}"
    )


if __name__ == "__main__":
    main()
