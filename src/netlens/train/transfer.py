"""Transfer learning: start from another checkpoint (``--init``) and freeze layers (``--freeze``).

``--freeze backbone`` trains only the head: the last module with parameters to run in the
model's forward pass (on a sample batch), else the last one defined;
``--freeze up-to LAYER`` freezes every module up to and including ``LAYER`` in the order the
forward pass runs them (as ``backbone`` finds the head; definition order only when the model
was not run), never the head unless ``LAYER`` is the head or holds it: a head defined before the
stem still runs last. A layer without weights (a ReLU, a pool) sits where the last layer with
weights defined before it runs. Parameters the model's root module owns itself (a ViT's
``cls_token``, ``pos_embed``, ``dist_token``, ``reg_token``; torchvision's ``class_token``)
belong to the backbone: frozen by ``backbone``, and by ``up-to LAYER`` past the first module to
run. Frozen modules also stay in eval mode during training, so their BatchNorm statistics are
kept too.

``--init`` copies every tensor whose name and shape match. The classifier's rows are matched
by class name when both the checkpoint and the new data name their classes (a class renamed or
added changes the folders' sort order): a class new to this run keeps its fresh rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import NetlensError, NetlensWarning, hint
from ..frozen_state import eval_mode

if TYPE_CHECKING:
    from ..lens import Lens
    from ..plugins.manager import PluginHost

__all__ = [
    "call_order",
    "count_params",
    "freeze",
    "head_name",
    "inherited_arch_kwargs",
    "init_from",
    "init_notes",
    "load_init",
]


def _owners(model: nn.Module) -> list[str]:
    """The modules that own parameters directly, in definition order."""
    return [
        n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))
    ]


def call_order(model: nn.Module, x: torch.Tensor) -> tuple[Any, list[str]]:
    """``model(x)`` in eval mode without gradients (train/eval flags restored), and the modules
    owning parameters in the order they finished running (a module run twice counts last)."""
    modules = dict(model.named_modules())
    order: dict[str, None] = {}

    def hook(name: str) -> Any:
        def done(*_: Any) -> None:
            order.pop(name, None)
            order[name] = None

        return done

    handles = [modules[n].register_forward_hook(hook(n)) for n in _owners(model)]
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, list(order)


def head_name(model: nn.Module, order: list[str] | None = None) -> str:
    """The classifier: the last module owning parameters to run (``order``, from
    :func:`call_order`), else the last one defined."""
    owners = _owners(model)
    if not owners:
        raise NetlensError(f"{type(model).__name__} has no parameters to train")
    ran = [n for n in order or [] if n in owners]
    return ran[-1] if ran else owners[-1]


def freeze(model: nn.Module, spec: str | None, order: list[str] | None = None) -> list[str]:
    """Set ``requires_grad=False`` per ``spec`` (``backbone`` or ``up-to:LAYER``); frozen names.

    ``order``: the modules in the order they ran (:func:`call_order`), to find the head by and
    to cut ``up-to`` at (definition order without it).
    Only the trainer's own fresh model is changed, never a user's.
    """
    if not spec:
        return []
    names = [n for n, _ in model.named_modules() if n]
    if spec == "backbone":
        head = head_name(model, order)
        frozen = [
            n
            for n in names
            if n != head and not n.startswith(head + ".") and not head.startswith(n + ".")
        ]
        first_run = ""
    elif spec.startswith(("up-to:", "up-to ", "upto:")):
        layer = spec.split(":", 1)[-1].split(" ", 1)[-1].strip()
        if layer not in names:
            raise NetlensError(f"--freeze up-to: no layer '{layer}'{hint(layer, names)}")
        frozen, first_run = _up_to(model, layer, order)
    else:
        raise NetlensError(f"--freeze takes 'backbone' or 'up-to:LAYER', not '{spec}'")
    modules = dict(model.named_modules())
    for n in frozen:
        for p in modules[n].parameters(recurse=False):
            p.requires_grad_(False)
    if spec == "backbone" or any(n.split(".")[0] != first_run for n in frozen):
        for p in model.parameters(recurse=False):  # the root's own: ahead of every layer
            p.requires_grad_(False)
    return frozen


def _inside(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def _up_to(model: nn.Module, layer: str, order: list[str] | None) -> tuple[list[str], str]:
    """The modules ``up-to:LAYER`` freezes, in definition order, and the top-level module that
    runs first (the root's own parameters run before it).

    The modules owning parameters are cut in the order they ran (``order``; definition order
    without it); the head is kept unless ``LAYER`` is it or holds it. A module without
    parameters of its own sits where the last one with parameters defined before it does."""
    names = [n for n, _ in model.named_modules() if n]
    owners = _owners(model)
    ran = [n for n in order or [] if n in owners]
    seq = ran + [n for n in owners if n not in ran] if ran else owners
    where = {n: i for i, n in enumerate(seq)}
    cut = max((where[n] for n in seq if _inside(n, layer)), default=None)
    if cut is None:  # no weights inside: placed after the last owner defined before it
        before = [n for n in names[: names.index(layer)] if n in where]
        cut = where[before[-1]] if before else -1
    head = head_name(model, order)
    keep_head = not (_inside(head, layer) or _inside(layer, head))
    cold = {n for n in seq[: cut + 1] if not (keep_head and _inside(n, head))}
    cold |= {n for n in owners if _inside(n, layer)}
    frozen, last_owner = [], None
    for n in names:
        below = [o for o in owners if _inside(o, n)]
        if below:
            last_owner = below[-1]
            ice = all(o in cold for o in below)
        else:  # no parameters: frozen with the layer it follows
            ice = last_owner in cold and not (keep_head and _inside(n, head))
        if ice or _inside(n, layer):
            frozen.append(n)
    return frozen, seq[0].split(".")[0] if seq else ""


def set_frozen_eval(model: nn.Module, frozen: list[str]) -> None:
    """Put frozen modules in eval mode (call after ``model.train()``)."""
    modules = dict(model.named_modules())
    for n in frozen:
        modules[n].eval()


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def load_init(
    source: str | Path,
    host: PluginHost,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
) -> Lens:
    """The model ``--init`` names (a checkpoint path or ``zoo:NAME``), on CPU.

    A file that names no architecture (a bare state_dict, a ``.safetensors``) is built as the
    run's ``arch`` (with its ``arch_kwargs``); a checkpoint that names one is built as it says.
    ``trust``: unpickle a whole pickled model (``torch.save(model)``; runs code from the file).
    """
    from ..models.load import load

    try:
        return load(str(source), host=host, device="cpu", trust=trust)
    except NetlensError as exc:
        if not arch or "holds only weights" not in str(exc):
            raise
    kwargs = arch_kwargs or None
    return load(str(source), arch=arch, arch_kwargs=kwargs, host=host, device="cpu", trust=trust)


def inherited_arch_kwargs(init: Lens, arch: str) -> dict[str, Any]:
    """The ``--init`` model's architecture options when it is the same architecture.

    So ``--arch resnet --init zoo:fmnist-resnet`` builds the zoo model's widths without
    repeating them; the class count, channels and image size still come from the new data.
    """
    if init.card.get("arch") != arch:
        return {}
    own = ("num_classes", "in_chans", "img_size")
    return {k: v for k, v in (init.card.get("arch_kwargs") or {}).items() if k not in own}


def init_from(
    model: nn.Module,
    init: Lens,
    source: str,
    classes: Sequence[str] | None = None,
    order: list[str] | None = None,
) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape match from the ``--init`` model; the classifier's
    rows by class name when ``classes`` (the new run's) and the checkpoint's are both known.

    Returns the number of tensors copied and the names left fresh (typically the head, when
    the class count differs). ``order``: the modules in the order they ran (:func:`call_order`),
    to find the classifier by (definition order without it).
    """
    copied, fresh, _ = _init(model, init, source, classes, order)
    return copied, fresh


def init_notes(
    model: nn.Module,
    init: Lens,
    source: str,
    classes: Sequence[str] | None = None,
    order: list[str] | None = None,
) -> list[str]:
    """:func:`init_from`, and the lines saying what was copied: tensors, and the head's rows
    matched by class name."""
    copied, fresh, rows = _init(model, init, source, classes, order)
    return [f"init from {source}: {copied} tensors copied, {len(fresh)} fresh", *rows]


def _init(
    model: nn.Module,
    init: Lens,
    source: str,
    classes: Sequence[str] | None,
    order: list[str] | None,
) -> tuple[int, list[str], list[str]]:
    other = init.model.state_dict()
    own = model.state_dict()
    old = [str(c) for c in init.classes] if init.classes else None
    new = [str(c) for c in classes] if classes else None
    heads = _head_keys(model, order, len(new)) if new and old else []
    by_name = _match_names(init.classes, new) if heads and new else {}
    guessed = bool(getattr(init.classes, "guessed", False))
    named = bool(heads) and (bool(by_name) or not guessed)  # else by position, as before
    fit = {
        k: v
        for k, v in other.items()
        if k in own and not (named and k in heads) and tuple(v.shape) == tuple(own[k].shape)
    }
    rows: list[str] = []
    fits = [k for k in heads if _fits_rows(other.get(k), own[k], len(old or ()))] if named else []
    for k in fits if by_name else []:
        mixed = own[k].clone()  # a class new to this run keeps its fresh rows
        dst, src = zip(*by_name.items(), strict=True)
        mixed[list(dst)] = other[k][list(src)].to(mixed.dtype)
        fit[k] = mixed
    if fits and new:
        added = [_short(c) for i, c in enumerate(new) if i not in by_name]
        more = ", …" if len(added) > 5 else ""
        rows.append(
            f"init from {source}: the head's rows matched by class name for {len(by_name)} "
            f"of {len(new)} classes, fresh for {len(added)}"
            + (f" ({', '.join(added[:5])}{more})" if added else "")
        )
    if not fit:
        raise NetlensError(f"--init {source}: no weight matches this architecture by name/shape")
    model.load_state_dict(fit, strict=False)
    if new and old and heads and not named:
        why = "the checkpoint's class names are only guessed and none is this data's"
    elif new and not old:
        why = "the checkpoint names no classes"
    elif old and not new:
        why = "this run names no classes"
    else:
        why = ""
    if why:
        _warn_positional(model, source, fit, order, len(new or old or ()), why)
    return len(fit), sorted(set(own) - set(fit)), rows


def _short(name: str) -> str:
    return repr(name if len(name) <= 30 else name[:29] + "…")


def _fits_rows(theirs: torch.Tensor | None, mine: torch.Tensor, n_old: int) -> bool:
    """Whether the checkpoint's classifier tensor is this one's with ``n_old`` rows."""
    return theirs is not None and tuple(theirs.shape) == (n_old, *mine.shape[1:])


def _head_keys(model: nn.Module, order: list[str] | None, n: int) -> list[str]:
    """The state_dict keys of the final classifier: the tensors with ``n`` rows of the last
    module to run (``order``; the last defined without it) when it is a linear layer or a 1×1
    convolution with ``n`` outputs, and of the same layers that run just before it on the same
    features (a distilled ViT's ``head`` and ``head_dist``)."""
    owners = _owners(model)
    ran = [m for m in order or [] if m in owners]
    modules = dict(model.named_modules())
    heads: list[str] = []
    for name in reversed(ran or owners):
        w = getattr(modules[name], "weight", None)
        if not _classifier(modules[name], n):
            if heads or ran:
                break
            continue
        last = modules[heads[0]].weight if heads else None
        if last is not None and (w.shape != last.shape or last.shape[1] == n):
            break  # another shape, or one that feeds it: not a classifier of its own
        heads.append(name)
    return [
        k
        for k, t in model.state_dict(keep_vars=True).items()
        if k.rsplit(".", 1)[0] in heads and "." in k and t.dim() >= 1 and t.shape[0] == n
    ]


def _classifier(module: nn.Module, n: int) -> bool:
    """A linear layer, or a 1×1 convolution, with ``n`` outputs."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.shape[0] != n:
        return False
    return w.dim() == 2 or all(k == 1 for k in w.shape[2:])


def _match_names(old: Sequence[Any], new: list[str]) -> dict[int, int]:
    """This run's class index → the checkpoint's, for the classes both name: the same name, else
    one the checkpoint's class answers to (:class:`~netlens.models.known_classes.ClassNames`'
    aliases), else the same name but for case, separators and Unicode form."""
    from ..data.labels import normalize_name

    names = [str(c) for c in old]
    exact = {c: i for i, c in enumerate(names)}
    loose: dict[str, int | None] = {}
    for i, c in enumerate(names):
        key = normalize_name(c)
        loose[key] = None if key in loose else i  # two of them: neither
    find = getattr(old, "find", None)
    out = {j: exact[c] for j, c in enumerate(new) if c in exact}  # same names first
    taken = set(out.values())
    for j, c in enumerate(new):
        if j in out:
            continue
        i = find(c) if find is not None else None
        i = loose.get(normalize_name(c)) if i is None else i
        if i is not None and i not in taken:
            out[j] = i
            taken.add(i)
    return dict(sorted(out.items()))


def _warn_positional(
    model: nn.Module, source: str, fit: dict[str, Any], order: list[str] | None, n: int, why: str
) -> None:
    """A warning when the head's ``n`` rows were copied by position (``why``: one side's class
    names are not known): they serve this run's classes in output order, whatever they were
    trained for."""
    if not any(k in fit for k in _head_keys(model, order, n)):
        return
    warnings.warn(
        f"--init {source}: {why}, so its head's {n} rows were copied in output order; check "
        "that its classes were this data's, in this order (a netlens checkpoint records them, "
        "and its rows are matched by class name)",
        NetlensWarning,
        stacklevel=4,
    )
