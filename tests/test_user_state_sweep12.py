"""The user's model and state, sweep 12: sanity's cascade randomises layers pruned with
``torch.nn.utils.prune`` (their mask kept), seeds no CUDA generator it does not restore, an
analysis leaves initialised CUDA generators as it found them, and top-activations runs under a
float64 default dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrize

import netlens
from netlens.metrics import randomization
from netlens.metrics.randomization import model_copy, randomize_modules

pytestmark = [pytest.mark.usefixtures("one_thread")]


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip


def pruned_and_plain() -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor]]:
    """A net with every conv/linear weight pruned (L1, 30 %), an unpruned copy holding its
    effective weights, and the masks by module name."""
    torch.manual_seed(0)
    pruned = tiny_net()
    for m in pruned.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.3)
    plain = tiny_net()
    masks = {
        n: m.weight_mask.clone() for n, m in pruned.named_modules() if hasattr(m, "weight_mask")
    }
    state = {}
    for k, v in pruned.state_dict().items():
        if k.endswith("weight_mask"):
            continue
        if k.endswith("weight_orig"):
            k, v = k[: -len("_orig")], v * masks[k[: -len(".weight_orig")]]
        state[k] = v
    plain.load_state_dict(state)
    return pruned, plain, masks


def masked_randomize(masks: dict[str, torch.Tensor]):  # noqa: ANN202
    """``randomize_modules`` for the unpruned copy, with the pruned net's masks multiplied into
    the fresh weights: what the pruned net's randomised layers must compute."""

    def run(model: nn.Module, names: list[str], seed: int) -> None:
        randomize_modules(model, names, seed)
        with torch.no_grad():
            for n, m in model.named_modules():
                if n in masks:
                    m.weight.mul_(masks[n])

    return run


# -- 1. layers pruned with torch.nn.utils.prune ----------------------------------------------
def test_pruned_layers_get_fresh_weights_and_keep_their_mask() -> None:
    pruned, plain, masks = pruned_and_plain()
    x = torch.randn(2, 3, 32, 32)
    work, ref = model_copy(pruned), model_copy(plain)
    names = [n for n, _ in pruned.named_modules() if n]
    randomize_modules(work, names, seed=3)
    masked_randomize(masks)(ref, names, seed=3)
    with torch.no_grad():
        work(x)  # prune's pre-hook rebuilds weight from weight_orig * weight_mask
        for n in masks:
            got, trained = (
                dict(work.named_modules())[n].weight,
                dict(pruned.named_modules())[n].weight,
            )
            assert not torch.allclose(got, trained)  # old code: the trained weights
            torch.testing.assert_close(got, dict(ref.named_modules())[n].weight)
            assert torch.equal(dict(work.named_modules())[n].weight_mask, masks[n])
        torch.testing.assert_close(work(x), ref(x))
    assert torch.equal(pruned[0].weight_orig, model_copy(pruned)[0].weight_orig)  # user's kept


def test_sanity_curve_of_a_pruned_net_is_that_of_its_unpruned_twin(monkeypatch) -> None:  # noqa: ANN001
    pruned, plain, masks = pruned_and_plain()
    x = torch.randn(2, 3, 32, 32)
    got = netlens.load(pruned, input_size=32, mean=0, std=1).run(
        "sanity", x, method="gradcam", progress=False
    )
    with monkeypatch.context() as patch:
        patch.setattr(randomization, "randomize_modules", masked_randomize(masks))
        ref = netlens.load(plain, input_size=32, mean=0, std=1).run(
            "sanity", x, method="gradcam", progress=False
        )
    rho = [r["spearman"] for r in got.table]
    assert [r["randomised"] for r in got.table] == [r["randomised"] for r in ref.table]
    np.testing.assert_allclose(rho, [r["spearman"] for r in ref.table], atol=1e-4)
    assert min(rho) < 0.9  # old code: 1.000 at every step


def test_evaluate_randomization_of_a_pruned_net_is_that_of_its_unpruned_twin(monkeypatch) -> None:  # noqa: ANN001
    pruned, plain, masks = pruned_and_plain()
    data = (torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]))
    kw = {"methods": "gradcam", "metrics": "randomization", "progress": False}
    got = (
        netlens.load(pruned, input_size=32, mean=0, std=1)
        .evaluate(data, **kw)
        .score("gradcam", "randomization")
    )
    with monkeypatch.context() as patch:
        patch.setattr(randomization, "randomize_modules", masked_randomize(masks))
        ref = (
            netlens.load(plain, input_size=32, mean=0, std=1)
            .evaluate(data, **kw)
            .score("gradcam", "randomization")
        )
    assert got == pytest.approx(ref, abs=1e-4)
    assert got < 0.9  # old code: 1.0, the maps of the trained net


def test_a_parametrization_mask_is_kept_too() -> None:
    """A mask as a parametrization (no right_inverse, as torch.ao.pruning's FakeSparsity): the
    fresh weight goes to ``parametrizations.weight.original`` and the mask still applies."""

    class Masked(nn.Module):
        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * self.mask

    torch.manual_seed(0)
    net = tiny_net()
    mask = (torch.rand_like(net[3].weight) > 0.3).float()
    parametrize.register_parametrization(net[3], "weight", Masked(mask))
    work = model_copy(net)
    randomize_modules(work, ["3"], seed=5)
    ref = nn.Conv2d(8, 16, 3, padding=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref.reset_parameters()
    with torch.no_grad():
        torch.testing.assert_close(work[3].weight, ref.weight * mask)
        assert torch.equal(work[3].parametrizations.weight[0].mask, mask)


# -- 2. no CUDA generator seeded and left so ---------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="reads the queue of a CPU-only torch")
def test_randomisation_queues_no_cuda_seeding() -> None:
    """``torch.manual_seed`` seeds every CUDA generator too; without a GPU torch queues that and
    runs it when CUDA initialises: the user's CUDA seed replaced by netlens'."""
    from torch.cuda import _lazy_seed_tracker as tracker

    torch.manual_seed(0)
    lens = netlens.load(tiny_net(), input_size=32, mean=0, std=1)
    x = torch.randn(2, 3, 32, 32)
    torch.cuda.manual_seed_all(1234)  # the user's own CUDA seed, queued
    before = list(tracker.get_calls())
    lens.run("sanity", x, method="gradcam", progress=False)
    lens.evaluate((x, torch.tensor([0, 1])), methods="gradcam", metrics="randomization")
    randomize_modules(model_copy(lens.model), ["0"], seed=7)
    assert [c for c in tracker.get_calls() if c not in before] == []


def test_randomize_modules_draws_as_the_seeded_global_generator_and_restores_it() -> None:
    """The same weights as ``torch.manual_seed(seed)`` then ``reset_parameters`` (results on
    CPU unchanged), with the caller's CPU stream left where it was."""
    torch.manual_seed(0)
    net = tiny_net()
    ref = nn.Conv2d(8, 16, 3, padding=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        ref.reset_parameters()
    torch.manual_seed(99)
    state = torch.get_rng_state()
    work = model_copy(net)
    randomize_modules(work, ["3"], seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(work[3].weight, ref.weight) and torch.equal(work[3].bias, ref.bias)


def test_a_model_on_cuda_gets_its_cuda_generators_seeded_and_restored(monkeypatch) -> None:  # noqa: ANN001
    """A model on CUDA draws its fresh weights from the CUDA generators: seeded with the seed
    (as ``torch.manual_seed`` did: the same numbers on a GPU) inside a fork of every device's,
    restored afterwards; a fake two-GPU torch records the calls."""
    from netlens.metrics import reinit

    calls = []
    monkeypatch.setattr(reinit, "_accelerators", lambda model: ["cuda"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda,
        "get_rng_state",
        lambda device="cuda": calls.append(("save", device)) or torch.zeros(1),
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("restore", device))
    )
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(("seed", seed)))
    randomize_modules(model_copy(tiny_net()), ["3"], seed=7)
    assert calls == [("save", 0), ("save", 1), ("seed", 7), ("restore", 0), ("restore", 1)]


def test_an_analysis_restores_the_initialised_cuda_generators(monkeypatch) -> None:  # noqa: ANN001
    """Where CUDA is initialised, Analyzer.run forks every CUDA device's generator as well as
    the CPU's (noise drawn on the GPU); a fake two-GPU torch records the saves and restores."""
    saved, restored = [], []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": saved.append(device) or torch.zeros(1)
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(device)
    )
    torch.manual_seed(0)
    netlens.load(tiny_net(), input_size=32, mean=0, std=1).run(
        "stats", torch.randn(2, 3, 32, 32), progress=False
    )
    assert saved == [0, 1] and restored == [0, 1]  # old code: neither (devices=[])


# -- 3. top-activations under a float64 default dtype --------------------------------------
def test_top_activations_under_a_float64_default_dtype() -> None:
    torch.manual_seed(0)
    lens = netlens.load(tiny_net(), input_size=32, mean=0, std=1)
    data = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    kw = {"layer": "3", "k": 2, "max_channels": 2, "progress": False}
    ref = lens.run("top-activations", data, **kw)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = lens.run("top-activations", data, **kw)  # old code: Float did not match Double
    finally:
        torch.set_default_dtype(default)
    assert got.table == ref.table
    for key, value in ref.arrays.items():
        np.testing.assert_array_equal(got.arrays[key], value)
