"""Trusted pickles that name functions of the script or notebook that saved them.

A pickle keeps functions and classes by name. Those defined in the script or notebook that
saved the file live in ``__main__``, which is another program when the file is read: fastai's
``learn.export()`` of the pets tutorial holds its labelling function ``is_cat``, and
``load_learner`` fails with "Can't get attribute 'is_cat' on <module '__main__'>" until the user
defines it again. Such a function is needed to train, not to explain: the model and its input
pipeline do not call it. :func:`trusted_load` (used only with ``--trust``) reads such a file
with a stand-in for each ``__main__`` name it cannot find; a stand-in that is ever called says,
in one line, which name was needed. :func:`stand_ins_in` finds stand-ins inside a model, where
they would be needed to run it: the loader then refuses the file as before.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

__all__ = ["Missing", "stand_ins_in", "trusted_load"]


class _MissingType(type):
    """Creates instances while the file is read (a pickle may rebuild an object of the class);
    afterwards, calling the stand-in says which name was needed."""

    sealed = False
    missing_name = ""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.sealed:
            raise ModelLoadError(_needed(cls.missing_name))
        return super().__call__(*args, **kwargs)


class Missing(metaclass=_MissingType):
    """A stand-in for a ``__main__`` function or class a trusted pickle names; its objects keep
    what the pickle gives them and run nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["missing_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["missing_state"] = state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelLoadError(_needed(type(self).missing_name))

    def __repr__(self) -> str:
        return f"<{type(self).missing_name}, not found>"


def _needed(name: str) -> str:
    return (
        f"the model file's {name} is needed here, but it was defined in the script or notebook "
        "that saved the file, so netlens cannot import it: move it into a module (a .py file "
        "next to the model, run from that folder) and save the file again"
    )


def trusted_load(path: Path, main: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """``torch.load(path, weights_only=False)`` with a :class:`Missing` stand-in for each
    ``__main__`` name that cannot be found; the object and those names (``__main__.is_cat``).
    ``main``: where such names are found first (the namespace of the file ``--arch FILE.py:Net``
    names, the script that defined them when the model was saved). Runs the file's code: call it
    only for a file the user trusts."""
    made: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except AttributeError:
                if module != "__main__":
                    raise
                if main and name in main:
                    return main[name]
                full = f"{module}.{name}"
                if full not in made:
                    made[full] = _MissingType(name, (Missing,), {"missing_name": full})
                return made[full]

    lenient = types.ModuleType("netlens_lenient_pickle")
    lenient.__dict__.update(vars(pickle))
    lenient.Unpickler = Unpickler  # type: ignore[attr-defined]
    lenient.load = lambda fh, **kw: Unpickler(fh, **kw).load()  # type: ignore[attr-defined]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=lenient)
    finally:
        for cls in made.values():
            cls.sealed = True  # type: ignore[attr-defined]
    return obj, sorted(made)


def stand_ins_in(model: nn.Module) -> list[str]:
    """The names of the stand-ins a model holds (as submodules or attributes), in the order
    met; empty for a model that runs without them."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[Any] = [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        name = _stand_in_name(obj)
        if name is not None:
            found.append(name)
            continue
        if isinstance(obj, nn.Module):
            held = {k: v for k, v in vars(obj).items() if k not in ("_parameters", "_buffers")}
            todo += [*held.values()]
        elif isinstance(obj, dict):
            todo += list(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo += list(obj)
        elif hasattr(obj, "func") and hasattr(obj, "args"):  # functools.partial
            todo += [obj.func, *obj.args]
    return list(dict.fromkeys(found))


def _stand_in_name(obj: Any) -> str | None:
    if isinstance(obj, _MissingType):
        return obj.missing_name
    if isinstance(obj, Missing):
        return type(obj).missing_name
    return None
