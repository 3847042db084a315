"""netlens.testing, the pytest helper for plugin authors: its fixtures and its assertions."""

from __future__ import annotations

import types

import cv2
import pytest
import torch

from netlens.lens import Lens

# this module imports the helper itself: let pytest rewrite its asserts before the import
pytest.register_assert_rewrite("netlens.testing")
from netlens.testing import (  # noqa: E402
    TINY_CLASSES,
    TinyCNN,
    assert_model_unchanged,
    assert_no_hooks,
    make_tiny_model,
)

pytest_plugins = ["netlens.testing"]


def test_tiny_model_is_seeded_and_small(tiny_model):
    assert isinstance(tiny_model, TinyCNN) and not tiny_model.training
    assert tiny_model.input_size == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny_model(x), make_tiny_model()(x))
        assert not torch.equal(tiny_model(x), make_tiny_model(seed=1)(x))
    assert sum(p.numel() for p in tiny_model.parameters()) < 5000


def test_tiny_lens_and_sample_images(tiny_lens, sample_images):
    assert isinstance(tiny_lens, Lens) and tiny_lens.classes == TINY_CLASSES
    assert len(sample_images) == 3 and all(p.suffix == ".png" for p in sample_images)
    img = cv2.imread(str(sample_images[0]))
    assert img.shape == (40, 48, 3) and img.std() > 20
    probs = tiny_lens.predict(sample_images)
    assert probs.shape == (3, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_plugin_host_factory_is_fresh_and_ignores_the_env(plugin_host, monkeypatch):
    monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", "cam")
    mod = type(pytest)("extra_plugin")
    from netlens.plugins import hookimpl

    @hookimpl
    def netlens_register_analyzers(registry):
        extra = types.SimpleNamespace(run=lambda lens, inputs=None, **options: None)
        registry.add("extra", extra, description="an extra analyzer")

    mod.netlens_register_analyzers = netlens_register_analyzers
    host = plugin_host(mod, entry_points=False)
    assert host.analyzers.names() == ["extra"]
    assert "extra" not in plugin_host().analyzers  # another host does not see it
    assert "cam" in plugin_host().analyzers
    assert "cam" not in plugin_host(disable=("cam",)).analyzers


def test_tiny_model_file_loads_with_netlens(tiny_model_file):
    import netlens

    lens = netlens.load(tiny_model_file)
    assert lens.classes == TINY_CLASSES and lens.transform.size == (48, 48)


def test_assert_no_hooks_finds_module_and_global_hooks(tiny_model):
    assert_no_hooks(tiny_model)
    handle = tiny_model.conv2.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="conv2._forward_hooks"):
        assert_no_hooks(tiny_model)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        with pytest.raises(AssertionError, match="_global_forward_hooks"):
            assert_no_hooks(tiny_model)
    finally:
        handle.remove()
    assert_no_hooks(tiny_model)


def _nudge_weight(m):
    with torch.no_grad():
        m.fc.bias[0] += 1e-6


def _set_grad(m):
    m.conv1.weight.grad = torch.zeros_like(m.conv1.weight)


def _freeze(m):
    m.fc.weight.requires_grad_(False)


def _train(m):
    m.bn1.train()


def _hook(m):
    m.act1.register_forward_pre_hook(lambda *a: None)


def _buffer(m):
    m.bn1.running_mean.add_(0.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_nudge_weight, "weights/buffers changed: fc.bias"),
        (_set_grad, ".grad changed: conv1.weight"),
        (_freeze, "requires_grad changed: fc.weight"),
        (_train, "training changed: bn1"),
        (_hook, "hooks changed: act1._forward_pre_hooks"),
        (_buffer, "weights/buffers changed: bn1.running_mean"),
    ],
)
def test_assert_model_unchanged_catches_each_kind_of_change(change, message, tiny_model):
    with pytest.raises(AssertionError, match=message.replace(".", r"\.")):
        with assert_model_unchanged(tiny_model):
            change(tiny_model)


def test_assert_model_unchanged_passes_a_clean_forward_and_backward(tiny_model):
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with assert_model_unchanged(tiny_model):
        (grad,) = torch.autograd.grad(tiny_model(x).sum(), x)
    assert grad.abs().sum() > 0
