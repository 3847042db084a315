"""Whole pickled models, loaded only with ``trust=True`` (unpickling runs the file's code).

``torch.save(model)``, a checkpoint dict holding the model (``{"model": model, "epoch": 3}``),
or a fastai ``learn.export()`` file (:mod:`.fastai_learner`). Names of the script that saved
the file that the model does not need are stood in for (:mod:`.missing_globals`); what to do
when unpickling fails (a missing package, a class defined in ``__main__``) is said in one line.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ..diagnostics import torch_load_quietly
from ..errors import ModelLoadError, UnsafeModelError
from ..naming import display_path
from ..preprocess import preprocess_for
from .load import LoadedModel, LoadRequest

__all__ = ["load_pickled_module"]


def load_pickled_module(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A whole pickled ``nn.Module``: refused unless ``trust=True`` (unpickling runs code)."""
    if not isinstance(req.payload, pickle.UnpicklingError):
        return None
    if not req.trust:
        raise UnsafeModelError(
            f"{source.name} is a pickled object, and unpickling runs whatever code it contains; "
            "load it only if you trust its author, with --trust (trust=True in Python)"
        )
    from .fastai_learner import is_learner, learner_parts
    from .missing_globals import trusted_load

    try:
        with torch_load_quietly(), _current_folder_importable():
            obj, missing = trusted_load(source, _users_namespace(req))
    except Exception as exc:  # noqa: BLE001 - trusted, but still not a torch file
        raise ModelLoadError(_unpickling_failed(display_path(source.name), exc)) from None
    where = display_path(source.name)
    if is_learner(obj):  # fastai's learn.export()
        _check_runs(obj.model, where)
        loaded = learner_parts(obj, where, own=True)
    else:
        try:
            model, key = _module_in(obj, source)
        except ModelLoadError:
            if missing:  # the model's own class was defined in __main__: it is the stand-in
                raise ModelLoadError(_defined_in_main(where, missing[0].split(".")[-1])) from None
            raise
        _check_runs(model, where)
        card = {"arch": type(model).__name__, **({"checkpoint_key": key} if key else {})}
        classes = None
        if key is not None:  # {"model": model, "class_to_idx": ...}: the dict's, else the model's
            from .classes import output_count
            from .recorded_classes import recorded_class_names

            classes = recorded_class_names(obj, lambda: output_count(model), where, module=model)
        # --arch tv:NAME says which torchvision weights' transforms (a traced GraphModule's)
        loaded = LoadedModel(model, preprocess_for(model, req.arch), classes, card)
    if missing:
        loaded.card["not_imported"] = missing
    return loaded


def _users_namespace(req: LoadRequest) -> dict[str, Any]:
    """The names of the file or module ``--arch FILE.py:Net`` names: a model pickled whole from
    the script that defined its class (``__main__.Net``) finds them there."""
    from .factory import parse_user_arch, user_module

    parsed = parse_user_arch(req.arch) if req.arch else None
    if parsed is None:
        return {}
    return dict(vars(user_module(parsed[0])))


def _check_runs(model: nn.Module, where: str) -> None:
    """Refuse a model made of names its file could not find (see :mod:`.missing_globals`)."""
    from .missing_globals import stand_ins_in

    needed = stand_ins_in(model)
    if needed:
        raise ModelLoadError(_defined_in_main(where, needed[0].rpartition(".")[2], part=True))
    try:
        broken = next((m for m in model.modules() if "_modules" not in vars(m)), None)
    except AttributeError:
        broken = model
    if broken is not None:  # torch pickles a statically quantized layer without its submodules
        raise ModelLoadError(
            f"{where} unpickles into a broken {type(broken).__name__} layer, without its "
            "submodules: torch cannot save a statically quantized model whole. Load the model "
            "in Python and pass it to netlens.load(model), or save the float model (or its "
            "state_dict) instead"
        )


def _module_in(obj: Any, source: Path) -> tuple[nn.Module, str | None]:
    """The model a trusted pickle holds: itself, or the one module of a checkpoint dict
    (``torch.save({"model": model, "epoch": 3})``; with several, the one under ``model``)."""
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, dict):
        found = {str(k): v for k, v in obj.items() if isinstance(v, nn.Module)}
        if len(found) == 1:
            return next(iter(found.values())), next(iter(found))
        if "model" in found:
            return found["model"], "model"
        if found:
            raise ModelLoadError(
                f"{source.name} holds several models (under {', '.join(map(repr, found))}); "
                "save the one you mean on its own, with torch.save(model, path)"
            )
    raise ModelLoadError(f"{source.name} unpickled to a {type(obj).__name__}, not a model")


@contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The current folder at the end of ``sys.path`` while a trusted pickle loads, as for
    ``python -c`` and notebooks: a model class in ``./nets.py`` is found from the command line
    too (at the end, so it shadows no installed module)."""
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.append(here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


# packages whose objects pickled models hold: module → what to pip install
_PACKAGES = {
    "fastai": "fastai",
    "fastcore": "fastai",
    "timm": "timm",
    "transformers": "transformers",
    "pytorch_lightning": "pytorch-lightning",
    "lightning": "lightning",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "efficientnet_pytorch": "efficientnet_pytorch",
    "pretrainedmodels": "pretrainedmodels",
    "monai": "monai",
    "kornia": "kornia",
    "open_clip": "open_clip_torch",
}


def _defined_in_main(name: str, cls: str, *, part: bool = False) -> str:
    """``cls``: the model's class (or, ``part``, a class or function the model holds)."""
    what, arch = (
        (f"the model needs {cls}, which", "CLASS") if part else (f"its model class {cls}", cls)
    )
    return (
        f"{name}: {what} was defined in a script or notebook (__main__) when it was saved, "
        f"so unpickling cannot find it; name the file that defines it with --arch "
        f"FILE.py:{arch} (or save model.state_dict() and load that with --arch)"
    )


def _unpickling_failed(name: str, exc: Exception) -> str:
    """What to do when a trusted pickle does not load: mostly, its model class is not found."""
    saved = "or save model.state_dict() instead and load it with --arch FILE.py:CLASS"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = _PACKAGES.get(exc.name.split(".")[0])
        if exc.name in ("fastcore.transform", "fastcore.dispatch"):
            return (
                f"{name} was saved with fastai before 2.8, whose classes fastai 2.8 moved; "
                "load it with that fastai (pip install 'fastai<2.8')"
            )
        if package is not None:
            return (
                f"{name} was saved with {package}, which is not installed here: install it "
                f"(pip install {package}) to load the file, {saved}"
            )
        return (
            f"{name} needs the Python module '{exc.name}' to unpickle (its model class lives "
            f"there): make it importable (run from the folder that holds it, or add that folder "
            f"to PYTHONPATH), {saved}"
        )
    found = re.match(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(exc))
    if isinstance(exc, AttributeError) and found:
        cls, module = found.groups()
        if module == "__main__" or module.endswith(".__main__"):
            return _defined_in_main(name, cls)
        return (
            f"{name}: its model class {cls} was defined in module '{module}', which has no "
            f"such name now, so unpickling cannot find it; save model.state_dict() instead and "
            f"load it with --arch FILE.py:{cls}"
        )
    return (
        f"{name} does not unpickle to a model (with --trust its code may have run already); "
        "check the file"
    )
