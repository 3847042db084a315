"""The :class:`~netlens.lens.Lens` a top-level function (``netlens.cam``, ``netlens.ablate``)
makes of a bare module, with the model's own options that netlens' messages advise in Python
(``output=``: the output to explain; ``task=``: how to read it), as ``netlens.load`` takes
them. Given with a Lens, which already holds them, they are refused in one line."""

from __future__ import annotations

from typing import Any

from .errors import NetlensError

MODEL_OPTIONS = ("output", "task")


def lens_for(model: Any, options: dict[str, Any]) -> Any:
    """``model`` as a Lens; ``options`` loses the model's own options, which the Lens takes."""
    from .lens import Lens

    given = {k: options.pop(k) for k in MODEL_OPTIONS if k in options}
    given = {k: v for k, v in given.items() if v is not None}  # None: netlens decides
    if not isinstance(model, Lens):
        return Lens(model, **given)
    held = {"output": model.output_key, "task": model.task}
    given = {k: v for k, v in given.items() if v != held[k]}  # what the Lens holds already
    if given:
        named = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise NetlensError(
            f"{named} belongs to the model, which this Lens already holds: give it to "
            f"netlens.load(model, {named}) (or Lens(model, {named})) and analyse that"
        )
    return model
