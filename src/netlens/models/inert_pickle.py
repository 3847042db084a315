"""Checkpoints whose metadata holds objects of other people's classes, read without their code.

A training checkpoint keeps more than weights: Lightning's ``hyper_parameters`` with a Hydra
``DictConfig`` or the ``functools.partial`` of an optimizer (the lightning-hydra-template saves
both), a script's own config object. ``torch.load(weights_only=True)`` refuses such a file
whole, and loading it with ``weights_only=False`` imports those classes and runs their code. Here
each class the file names (``torch.serialization.get_unsafe_globals_in_checkpoint``) is replaced
by an inert stand-in of netlens' own, which keeps what the pickle gives it as plain data and
runs nothing; mappings and lists become ``dict`` and ``list``. The weights then load as from any
state_dict. Only a checkpoint dict that holds a state_dict is read this way: a whole pickled
model still needs ``--trust``, since its class is the model.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["Inert", "load_inert"]

MAX_CLASSES = 256  # more foreign classes than any checkpoint's metadata holds: a pickled model


class Inert:
    """A stand-in for an object of a class netlens does not import: its pickled arguments and
    state are kept (``inert_args``, ``inert_state``), nothing of the original class runs."""

    inert_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = super().__new__(cls)
        obj.__dict__["inert_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["inert_state"] = state

    def __repr__(self) -> str:
        return f"<{self.inert_name}, not imported>"


def load_inert(path: Path, allowed: Sequence[Any] = ()) -> tuple[Any, list[str]] | None:
    """The file's object with every foreign class inert, and those classes' names; None when
    the file cannot be read so (not a zip checkpoint, too many foreign classes, a structure the
    weights-only unpickler refuses even so). ``allowed``: classes read as themselves (plain
    data such as ``argparse.Namespace``)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:  # torch < 2.5
        return None
    try:
        with torch.serialization.safe_globals(list(allowed)):
            names = sorted(finder(str(path)))
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file, or damaged
        return None
    if not names or len(names) > MAX_CLASSES:
        return None
    stand_ins: dict[str, Any] = {n: _stand_in(n, k) for k, n in enumerate(names)}
    for _ in range(len(names) + 1):
        try:
            inert = [(c, n) for n, c in stand_ins.items()]
            with torch.serialization.safe_globals([*allowed, *inert]):
                return torch.load(path, map_location="cpu", weights_only=True), names
        except pickle.UnpicklingError as exc:
            retry = _container_for(str(exc), stand_ins)
            if retry is None:
                return None
            stand_ins.update(retry)
        except Exception:  # noqa: BLE001 - anything else: not readable without the code
            return None
    return None


def _stand_in(name: str, k: int) -> type:
    return type(f"Inert{k}", (Inert,), {"__module__": __name__, "inert_name": name})


def _container_for(error: str, stand_ins: dict[str, Any]) -> dict[str, Any] | None:
    """The weights-only unpickler fills only real dicts and lists: the stand-in it names in
    its refusal (a subclass of dict or list in the original) becomes a plain dict or list."""
    found = re.search(r"Can only (\w+) (?:for|to) .*?<class '[\w.]+\.(Inert\d+)'>", error)
    if found is None:
        return None
    op, stand_in = found.groups()
    kind = list if op.lower().startswith("append") else dict
    name = next((n for n, c in stand_ins.items() if getattr(c, "__name__", "") == stand_in), None)
    return {name: kind} if name is not None else None
