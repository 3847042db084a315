"""What a model handed to netlens must not be, or should be warned of: compiled code netlens
cannot hook (TorchScript, a ``torch.export`` module), weights with no values (meta device) or
made under ``torch.inference_mode()``, a BatchNorm on batch statistics in eval mode."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .errors import NetlensError

__all__ = [
    "inference_refusal",
    "refuse_compiled",
    "refuse_meta",
    "tensors",
    "warn_batch_statistics",
]


def refuse_meta(model: nn.Module) -> None:
    """One line for a model whose weights are on the meta device (shapes, no values)."""
    meta = next((n for n, t in tensors(model) if t.is_meta), None)
    if meta is not None:
        raise NetlensError(
            f"the model's weights are on the meta device ('{meta}' has a shape but no "
            "values: a model built with device='meta' or init_empty_weights); load its "
            "weights first (model.to_empty(device='cpu'), then load_state_dict)"
        )


def warn_batch_statistics(model: nn.Module) -> None:
    """One warning line when a BatchNorm normalises with each batch's own statistics in eval
    mode (``track_running_stats=False``): an image's output then depends on the images batched
    with it, and batched passes differ from one image at a time."""
    from torch.nn.modules.batchnorm import _BatchNorm

    batch = (
        n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is None
    )
    name = next(batch, None)
    if name is None:
        return
    import warnings

    from .errors import NetlensWarning

    warnings.warn(
        f"BatchNorm '{name}' normalises with each batch's own statistics, also in eval mode "
        "(track_running_stats=False): an image's output depends on the images batched with "
        "it, so batched passes (Score-CAM's and Ablation-CAM's masked copies, evaluate's "
        "perturbed images) differ from one image at a time; batch_size=1 runs them one by one",
        NetlensWarning,
        stacklevel=3,
    )


def refuse_compiled(model: nn.Module) -> None:
    """One line for a model that is, or holds, compiled code netlens cannot hook or run in
    eval mode: a TorchScript module (``torch.jit.script``/``trace``, also nested inside an
    ``nn.Sequential``: its layers are invisible, and hooks on it raise) or the module of a
    ``torch.export`` program (``ep.module()``, which refuses ``.eval()``)."""
    for name, m in model.named_modules():
        where = f" at '{name}'" if name else ""
        if isinstance(m, torch.jit.ScriptModule):
            raise NetlensError(
                f"a TorchScript module ({type(m).__name__}{where}) runs as compiled code, "
                "without the Python layers netlens hooks; pass the nn.Module it was scripted or "
                "traced from (a TorchScript file loads with --arch NAME --trust)"
            )
        if _is_exported(m):
            raise NetlensError(
                f"a torch.export program's module (ep.module(){where}) is a graph of ATen ops, "
                "without the Python layers netlens hooks, and cannot switch to eval mode; pass "
                "the nn.Module it was exported from (a .pt2 file loads with --arch NAME --trust)"
            )


def _is_exported(m: nn.Module) -> bool:
    """Whether ``m`` is what ``torch.export``'s ``ExportedProgram.module()`` returns (a
    GraphModule whose own ``train``/``eval`` raise)."""
    if not isinstance(m, torch.fx.GraphModule):
        return False
    if any(c.__name__ == "_StatefulGraphModule" for c in type(m).__mro__):
        return True
    own = vars(m).get("eval") or vars(m).get("train")
    return "ExportedProgram" in getattr(own, "__qualname__", "")


def inference_refusal(model: nn.Module, exc: BaseException) -> NetlensError | None:
    """The one-line refusal for ``exc``, autograd's error on a model whose weights were made
    under ``torch.inference_mode()`` (None for any other error)."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    if "Inference tensors" not in text:
        return None
    name = next((n for n, t in tensors(model) if t.is_inference()), None)
    if name is None:
        return None
    return NetlensError(
        f"the model's weights were made under torch.inference_mode() ('{name}' is an inference "
        "tensor), and autograd cannot differentiate through them; build or load the model "
        "outside inference mode (torch.no_grad() is fine), or run a gradient-free analysis: "
        "cam with method scorecam or ablationcam (--method), occlusion"
    )


def tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's parameters and buffers, by name."""
    yield from model.named_parameters()
    yield from model.named_buffers()
