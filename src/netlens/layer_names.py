"""Layer names: dotted names, globs, types, and a module registered under several names.

``named_modules()`` lists each module object once, under its first name. A module can have more
(``self.enc1 = block; self.enc2 = block``, one ``nn.ReLU`` instance stored in two places, a
``self.target_layer = self.backbone.layer4`` shortcut): every such name selects the same module,
and **calls are counted per module object, whatever name ran it**. With ``forward`` running
``self.enc1(x)`` then ``self.enc2(y)``, ``enc1@1`` and ``enc2@1`` are both the second call (the
one through ``enc2``), ``enc2@0`` the first (through ``enc1``): a hook cannot tell by which
attribute a module was called. A probe keeps a capture under the name it was given
(:func:`given_names`), and messages listing calls name the other names (:func:`other_names`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from .errors import LayerNotFoundError, hint
from .layer_call import LayerCall

__all__ = ["given_names", "named_layers", "other_names", "selector_items"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All sub-modules by dotted name (the root itself excluded), but not the modules that
    compute a parametrized weight (``conv.parametrizations.weight`` of ``weight_norm``): they
    are called when the weight is read, and their "output" is the weight, not a layer's."""
    from torch.nn.utils.parametrize import ParametrizationList

    modules = list(model.named_modules())
    hidden = {n.rpartition(".")[0] for n, m in modules if isinstance(m, ParametrizationList)}
    return {n: m for n, m in modules if n and not _under(n, hidden)}


def _under(name: str, prefixes: set[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or inside one of them."""
    if not prefixes:
        return False
    parts = name.split(".")
    return any(".".join(parts[:k]) in prefixes for k in range(1, len(parts) + 1))


def _by_type(layers: dict[str, nn.Module], type_name: str) -> list[str]:
    """Layers of the type or of a subclass of it: ``type:Conv2d`` is also timm's ``StdConv2d``
    and ``Conv2dSame``, and a conv under ``weight_norm``/``spectral_norm`` (whose class
    becomes ``ParametrizedConv2d``)."""
    wanted = type_name.split(".")[-1].lower()
    return [
        n
        for n, m in layers.items()
        if any(c.__name__.lower() == wanted for c in type(m).__mro__ if c is not object)
    ]


def _alias_of(model: nn.Module, layers: dict[str, nn.Module], sel: str) -> str | None:
    """The name of the layer ``sel`` is another attribute path to (``self.target_layer =
    self.backbone.layer4``: ``named_modules`` lists each module once, under its first name)."""
    try:
        module = model.get_submodule(sel)
    except (AttributeError, ValueError):
        return None
    return next((n for n, m in layers.items() if m is module), None)


def base_names(model: nn.Module, layers: dict[str, nn.Module], sel: str) -> list[str]:
    """The layer names (first names, as in ``layers``) that one selector without ``@K`` and
    ``:consumed`` selects."""
    if sel in layers:
        return [sel]
    if sel.startswith("type:"):
        hits = _by_type(layers, sel[5:])
        if not hits:
            types = sorted({type(m).__name__ for m in layers.values()})
            raise LayerNotFoundError(
                f"no layer of type '{sel[5:]}' in {type(model).__name__}"
                f"{hint(sel[5:], types, 'type')} Types present: {', '.join(types[:12])}"
            )
        return hits
    if any(c in sel for c in "*?["):
        hits = [n for n in layers if fnmatch.fnmatchcase(n, sel)]
        if hits:
            return hits
    for prefix in _WRAPPER_PREFIXES:  # a name read off the wrapper netlens unwrapped
        if sel.startswith(prefix) and sel[len(prefix) :] in layers:
            return [sel[len(prefix) :]]
    alias = _alias_of(model, layers, sel)
    if alias is not None:
        return [alias]
    raise LayerNotFoundError(
        f"no layer '{sel}' in {type(model).__name__}{hint(sel, layers)} "
        "(run `netlens layers MODEL` to list the names)"
    )


def selector_items(selector: object) -> list[object]:
    """The single selectors in ``selector`` (a comma-separated string, a list, a module)."""
    if isinstance(selector, LayerCall) or isinstance(selector, nn.Module):
        return [selector]
    if isinstance(selector, str):
        return [s for s in selector.split(",") if s.strip()]
    try:
        return list(selector)  # type: ignore[call-overload]
    except TypeError:
        return [selector]  # refused by resolve_layers, in one line


def given_names(
    selector: str | nn.Module | Sequence[str | nn.Module], resolved: list[list[LayerCall]]
) -> list[tuple[LayerCall, LayerCall]]:
    """(name as given, selection) for each selection; ``resolved[i]`` holds what item ``i`` of
    :func:`selector_items` resolved to. A plain name that is another name of a layer (or a name
    under a ``module.`` wrapper prefix) is kept as given (``enc2@1``: the second call of the
    module ``enc1`` is, see the module docstring); duplicates of a given name are dropped."""
    pairs: list[tuple[LayerCall, LayerCall]] = []
    for item, found in zip(selector_items(selector), resolved, strict=True):
        given = None
        text = item.strip() if isinstance(item, str) else None
        if text is not None and len(found) == 1 and text not in (str(found[0]), found[0].name):
            parsed = LayerCall.parse(text)  # (a module named 'Div@17', onnx2torch's, is as found)
            plain = not any(c in parsed.name for c in "*?[") and ":" not in parsed.name
            if plain and parsed.name != found[0].name and parsed.name != "auto":
                given = found[0].with_name(parsed.name)
        for sel in found:
            name = given if given is not None else sel
            if all(name != g for g, _ in pairs):
                pairs.append((name, sel))
    return pairs


def other_names(model: nn.Module) -> dict[str, list[str]]:
    """For each layer (by first name) registered under several names, all its names."""
    names: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if n:
            names.setdefault(id(m), []).append(n)
    return {ns[0]: ns for ns in names.values() if len(ns) > 1}
