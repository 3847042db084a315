"""Fuzz: hostile option values through the Python API (issue 14, item 6).

The CLI's analyzer commands are made from the same declarations (:mod:`netlens.analyzers.specs`),
but Python callers pass values the shell never can: floats where whole numbers belong, lists,
dicts, ``True``, NaN, numbers beyond 64 bits, objects. Every declared option of every built-in
analyzer gets them. Values of the wrong kind or outside the declared range must be refused in
one clean line (a ``NetlensError``) before any input is read; values the declaration allows
must run or be refused in one line. Either way the model is unchanged (weights, ``.grad``,
``requires_grad``, train/eval flags, hooks).

Seeded (``NETLENS_FUZZ_SEED``): every refusal case runs (they are cheap), two of the
values that may run per option; ``NETLENS_FUZZ=all`` runs them all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import cv2
import pytest
import torch
from hostile_inputs import EVERYTHING, SEED, assert_one_clean_line, small_image

from netlens.analyzers.specs import BUILTINS
from netlens.errors import NetlensError
from netlens.lens import Lens
from netlens.plugins.manager import PluginHost
from netlens.testing import TINY_CLASSES, TinyCNN, assert_model_unchanged

HUGE = 2**70

# A fast valid call of each analyzer; the hostile option replaces or joins these.
BASE: dict[str, dict[str, Any]] = {
    "cam": {},
    "features": {"top": 2},
    "kernels": {},
    "stats": {"limit": 4},
    "top-activations": {"limit": 4, "max_channels": 2, "k": 2},
    "sanity": {},
    "evaluate": {"limit": 2, "steps": 2, "metrics": "deletion", "random_baseline": False},
    "ablate": {"limit": 4, "resamples": 10, "points": 2},
}
# Options whose large but allowed values cost time in proportion: no "may run" cases.
COSTLY = {"resamples", "points", "steps", "chunk", "batch_size", "cache_mb", "k", "top"}


class Opaque:
    """An object of no kind any option takes."""

    def __repr__(self) -> str:
        return "<opaque>"


@dataclass(frozen=True)
class Case:
    """One analyzer call with one hostile option value; ``refuse``: it must be refused."""

    analyzer: str
    option: str
    value: Any
    refuse: bool

    def __str__(self) -> str:
        shown = repr(self.value)
        return f"{self.analyzer}:{self.option}={shown[:24]}{'!' if self.refuse else '?'}"


def values_of(opt: Any) -> list[tuple[Any, bool]]:
    """Hostile values for one declared option, each with whether it must be refused."""
    kind = opt.kind
    if kind is bool:
        return [("maybe", True), ([1], False), (None, False)]
    if kind is int:
        bad = ["abc", 1.5, math.nan, math.inf, True, [1], {}, Opaque()]
        bad += [opt.low - 1] if opt.low is not None else []
        bad += [opt.high + 1, HUGE] if opt.high is not None else []
        maybe = [] if opt.name in COSTLY else [HUGE, -HUGE, 0, 2.0]
        return [(v, True) for v in bad] + [(v, False) for v in maybe if _inside(opt, v)]
    if kind is float:
        bad = ["abc", math.nan, math.inf, -math.inf, [0.5], {}, Opaque(), "1e999"]
        bad += [opt.low - 0.5] if opt.low is not None else []
        bad += [opt.high + 0.5] if opt.high is not None else []
        maybe = [1e300, -1e300, 0, 1, "0.5"]
        return [(v, True) for v in bad] + [(v, False) for v in maybe if _inside(opt, v)]
    if kind is str and opt.choices:
        return [(v, True) for v in ("zzz", "", 5, ["a"], opt.choices[0].upper())]
    # text the analyzer reads itself (layers, targets, lists, functions)
    maybe = ["", " ", "zzz", ",", -1, HUGE, math.nan, 1.5, [], [None], {}, Opaque(), b"\xff"]
    maybe += ["x" * 5000, "猫", "a,,b", ("conv1", 3), [-1, 0]]
    return [(v, False) for v in maybe]


def _inside(opt: Any, value: Any) -> bool:
    """The value lies inside the declared bounds (strings: as parsed)."""
    number = float(value)
    return (opt.low is None or number >= opt.low) and (opt.high is None or number <= opt.high)


def cases(seed: int = SEED, everything: bool = EVERYTHING) -> list[Case]:
    """Every refusal case; two seeded "may run" cases per option."""
    rng = random.Random(seed)
    found: list[Case] = []
    for spec in BUILTINS:
        for opt in spec.options:
            pool = values_of(opt)
            found += [Case(spec.name, opt.name, v, True) for v, r in pool if r]
            maybe = [v for v, r in pool if not r]
            chosen = maybe if everything else rng.sample(maybe, min(2, len(maybe)))
            found += [Case(spec.name, opt.name, v, False) for v in chosen]
    return found


CASES = cases()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Any]:
    """Two images and a data folder (4 classes × 2 images) the tiny CNN reads."""
    root = tmp_path_factory.mktemp("api")
    for i, name in enumerate(TINY_CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for j in range(2):
            img = small_image(32, 32, seed=10 * i + j)
            cv2.imwrite(str(root / "data" / name / f"{j}.png"), img)
    images = [root / "data" / TINY_CLASSES[0] / "0.png", root / "data" / TINY_CLASSES[1] / "0.png"]
    return {"images": images, "data": root / "data"}


@pytest.fixture(scope="module")
def host() -> PluginHost:
    """One plugin host for every case (finding the plugins costs ~40 ms each time)."""
    return PluginHost()


@pytest.fixture
def lens(host) -> Lens:
    torch.manual_seed(SEED)
    model = TinyCNN()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
    model.train()  # the user's flag: every analysis must give it back
    model.conv2.requires_grad_(False)
    return Lens(model, classes=TINY_CLASSES, name="tiny", host=host)


def call(lens: Lens, case: Case, inputs: dict[str, Any]) -> str | None:
    """Run the case; None when it ran, the one clean line when it was refused."""
    spec = next(s for s in BUILTINS if s.name == case.analyzer)
    given = inputs["images"] if spec.takes == "images" else inputs["data"]
    args = () if spec.takes == "model" else (given,)
    options = {**BASE[case.analyzer], case.option: case.value}
    try:
        lens.run(case.analyzer, *args, progress=False, **options)
    except NetlensError as exc:
        return assert_one_clean_line(str(exc))
    return None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_python_option(case, lens, inputs):
    with assert_model_unchanged(lens.model):
        line = call(lens, case, inputs)
    if case.refuse:
        assert line is not None, f"{case} was accepted"
        assert case.option in line, line


def test_every_declared_option_is_fuzzed():
    fuzzed = {(c.analyzer, c.option) for c in CASES}
    declared = {(s.name, o.name) for s in BUILTINS for o in s.options}
    assert fuzzed == declared
    assert sum(c.refuse for c in CASES) > 100


def test_the_sample_is_seeded():
    sample = [str(c) for c in cases(SEED, everything=False)]
    assert [str(c) for c in cases(SEED, everything=False)] == sample
    assert [str(c) for c in cases(SEED + 1, everything=False)] != sample
