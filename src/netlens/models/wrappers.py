"""The network inside the wrappers that training code leaves around it.

``nn.DataParallel`` and ``DistributedDataParallel`` keep the network as ``.module`` and
``torch.compile`` as ``._orig_mod``; all three share its parameters. The weight-averaging
wrappers (``torch.optim.swa_utils.AveragedModel``, timm's ``ModelEmaV2``/``ModelEmaV3``) hold
the averaged network as ``.module`` and their forward is its forward. netlens explains the
network itself:

- a compiled module runs the graph dynamo traced, so forward hooks registered later are not
  called on every path, and attributes the data config reads (``len(model)`` inside timm)
  raise; the eager network gives the same outputs and honours hooks;
- DataParallel on CPU, or on one device, runs the network as is; on several GPUs it scatters
  each batch over replicas, whose hooks fire on other devices;
- the network is what preprocessing is recognised from (a timm or torchvision class), and the
  layer names a user reads from it (``layer4``, not ``module.layer4``).

The wrappers are named in the run's JSON (``model.unwrapped``). :func:`activated_network`
finds the network in ``nn.Sequential(network, nn.Softmax(1))``, which is explained as it is
(with its softmax) but takes the network's preprocessing and class names.
"""

from __future__ import annotations

from torch import nn

__all__ = ["activated_network", "unwrap"]


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The network inside ``model``'s parallel, compile and averaging wrappers, and their class
    names, outermost first (``[]`` when there are none).

    Example:
        >>> net, peeled = unwrap(torch.compile(nn.DataParallel(resnet)))
        >>> net is resnet, peeled
        (True, ['OptimizedModule', 'DataParallel'])
    """
    peeled: list[str] = []
    while True:
        inner = _inner(model)
        if inner is None:
            return model, peeled
        peeled.append(type(model).__name__)
        model = inner


# weight-averaging wrappers whose forward is ``self.module(*args, **kwargs)``: told by class
# name and module (importing timm to test isinstance costs seconds)
_AVERAGING = {
    ("torch.optim.swa_utils", "AveragedModel"),
    ("timm.utils.model_ema", "ModelEmaV2"),
    ("timm.utils.model_ema", "ModelEmaV3"),
}


def _averaging(model: nn.Module) -> bool:
    """One of those, or a subclass that keeps its forward (one with its own is not unwrapped)."""
    own = type(model).forward
    return any(
        (c.__module__, c.__name__) in _AVERAGING and c.__dict__.get("forward") is own
        for c in type(model).__mro__
    )


def _inner(model: nn.Module) -> nn.Module | None:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    if _averaging(model) and isinstance(model.__dict__["_modules"].get("module"), nn.Module):
        return model.module  # SWA's AveragedModel, timm's ModelEmaV2/V3: the averaged copy
    if getattr(type(model), "wraps_network", False):  # netlens' own (evaluate's counter)
        return model.inner
    orig = model.__dict__.get("_modules", {}).get("_orig_mod")
    if type(model).__name__ == "OptimizedModule" and isinstance(orig, nn.Module):
        return orig  # torch._dynamo's class, told by name: importing dynamo costs seconds
    return None


def activated_network(model: nn.Module) -> nn.Module | None:
    """The network of ``nn.Sequential(network, activation...)``, where the modules after it
    have no weights (a softmax or sigmoid appended to a timm, torchvision or Hugging Face
    network); None for any other model. Its preprocessing and class names are the network's.
    """
    if type(model) is not nn.Sequential or len(model) < 2:
        return None
    first, rest = model[0], list(model)[1:]
    if any(True for m in rest for _ in m.parameters()):
        return None
    known = getattr(first, "pretrained_cfg", None) or type(first).__module__.startswith(
        ("torchvision.models", "transformers.")
    )
    return first if known else None
