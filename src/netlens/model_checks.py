"""What a model handed to netlens must not be, or should be warned of: compiled code netlens
cannot hook (TorchScript, a ``torch.export`` module), weights with no values (meta device) or
made under ``torch.inference_mode()``, a BatchNorm on batch statistics in eval mode, a forward
that takes more than one input (:func:`forward_refusal`, for every analysis's forwards)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .errors import NetlensError

__all__ = [
    "forward_refusal",
    "inference_refusal",
    "multi_input_refusal",
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


def forward_refusal(model: nn.Module, exc: BaseException) -> NetlensError | None:
    """The one-line refusal for ``exc``, raised by an analysis of ``model`` (None: let it
    through): a forward that takes more than one input (:func:`multi_input_refusal`; also the
    dry forward's, whose input-size advice cannot help), weights made under
    ``torch.inference_mode()``, detections (with a backbone layer of this model named)."""
    from .model_output import DetectionOutputError, detection_refusal

    refusal = (
        multi_input_refusal(model, exc)
        or _inference_refusal(model, exc)
        or video_refusal(model, exc)
    )
    if refusal is None and isinstance(exc, DetectionOutputError) and not exc.named:
        refusal = DetectionOutputError(detection_refusal(model), named=True)
    return refusal


inference_refusal = forward_refusal  # the name the analyzers' run guard calls


def video_refusal(model: nn.Module, exc: BaseException) -> NetlensError | None:
    """The one-line refusal for a model whose first convolution is 3-D (a video model,
    N×C×T×H×W in: torchvision's r3d_18, mc3_18) when images made it fail; None otherwise."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if not isinstance(first, nn.Conv3d) or not isinstance(exc, RuntimeError):
        return None
    return NetlensError(
        f"{type(model).__name__} is a video model (its first convolution is 3-D: N×C×T×H×W in) "
        "and netlens feeds it N×C×H×W images; give stats or ablate 5-D tensors as data, or "
        "wrap the model so that its forward takes N×C×H×W images"
    )


def multi_input_refusal(model: nn.Module, exc: BaseException) -> NetlensError | None:
    """The one-line refusal for ``exc`` when it is (or was caused by) the TypeError of calling
    ``model`` with one batch while its forward requires more inputs (RAFT's
    ``forward(image1, image2)``); None otherwise."""
    chain = _chain(exc)
    if not any(isinstance(e, TypeError) and "required" in str(e) for e in chain):
        return None
    needed = _required(model)
    if len(needed) < 2:
        return None
    inner = next((n for n, m in model.named_children() if len(_required(m)) == 1), None)
    sub = (
        f" (or a sub-module that does, e.g. forward(x) returning model.{inner}(x))" if inner else ""
    )
    return NetlensError(
        f"the model's forward takes more than one input ({', '.join(needed)}), but netlens "
        "feeds it one batch of images; wrap the model in an nn.Module whose forward takes one "
        f"tensor and calls it{sub}, and pass the wrapper"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 16:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _required(module: nn.Module) -> list[str]:
    """The parameters ``module``'s forward requires (no default; not ``*args``/``**kw``)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _inference_refusal(model: nn.Module, exc: BaseException) -> NetlensError | None:
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
