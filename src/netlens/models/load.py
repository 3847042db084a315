"""Turn a model source into a :class:`~netlens.lens.Lens`.

Sources, tried in order by loader plugins (netlens' own loaders last, so plugins can override):
a Hugging Face model folder; a netlens checkpoint; a bare state_dict (``.pt``/``.pth``/
``.safetensors``) plus ``arch``; the weights of a TorchScript or ``torch.export`` file plus
``arch``, only with ``trust=True``; a whole pickled module, only with ``trust=True`` (unpickling
runs code; :mod:`.pickled`, a fastai ``learn.export()`` file among them); an ``nn.Module``
or a fastai Learner.
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..diagnostics import torch_load_quietly
from ..errors import ModelLoadError, NetlensError, NetlensWarning
from ..naming import display_path, is_special_file
from ..preprocess import Preprocess, preprocess_for, with_overrides
from ..targets import check_task
from .archive import check_archive
from .checkpoint import build_checkpoint_model, is_checkpoint, read_checkpoint
from .factory import check_arch
from .foreign_files import _other_framework
from .hf import is_hf_folder
from .save import recorded_output
from .weights import CompiledArchive, compiled_kind, load_state

if TYPE_CHECKING:
    from ..lens import Lens
    from ..plugins.manager import PluginHost

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadedModel:
    """What a loader returns: the module and what is known about its input and classes."""

    model: nn.Module
    preprocess: Preprocess | None = None
    classes: list[str] | None = None
    card: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # what the model records of how its outputs are read


@dataclass
class LoadRequest:
    """What the user asked for; ``payload`` reads the file once, safely, for all loaders."""

    source: Path
    host: PluginHost
    arch: str | None = None
    num_classes: int | None = None
    trust: bool = False
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    not_imported: list[str] = field(default_factory=list)  # classes the payload holds inert

    @cached_property
    def payload(self) -> Any:
        """The file read with ``weights_only=True`` (an exception object when it refused); a
        model folder (``card.json`` + ``model.safetensors``, as the zoo ships) as a checkpoint."""
        from .shards import folder_index, read_sharded, special_payload

        if self.source.is_dir():
            index = None if is_model_folder(self.source) else folder_index(self.source)
            return read_model_folder(self.source) if index is None else read_sharded(index)
        special = special_payload(self.source)  # an index of shards, one shard, a DCP file
        if special is not None:
            return special
        if self.source.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                return load_file(str(self.source))
            except Exception:  # noqa: BLE001
                return ModelLoadError(
                    f"cannot read {display_path(self.source)}: damaged or not a safetensors file"
                )
        try:
            check_archive(self.source)
            kind = compiled_kind(self.source)
            if kind is not None:
                return CompiledArchive(kind)
            # plain data beside the weights (timm train.py's argparse "args", numpy arrays of
            # class names) is allowed in the weights-only unpickler
            with torch_load_quietly(), torch.serialization.safe_globals(_plain_data()):
                return torch.load(self.source, map_location="cpu", weights_only=True)
        except ModelLoadError as exc:
            return exc
        except pickle.UnpicklingError as exc:
            if _is_pickle(self.source):
                inert = _inert_checkpoint(self.source)
                if inert is None:
                    return exc  # a whole model, or more than data: only with trust
                self.not_imported = inert[1]
                return inert[0]
            return ModelLoadError(
                _other_framework(self.source)
                or f"cannot read {display_path(self.source)}: not a PyTorch file or corrupt"
            )
        except Exception:  # noqa: BLE001 - corrupt or not a torch file
            return ModelLoadError(
                _other_framework(self.source)
                or f"cannot read {display_path(self.source)} as a PyTorch file (damaged, or "
                "not a model file?)"
            )


def _plain_data() -> list[Any]:
    """Classes of plain data a checkpoint may keep beside its weights, which the weights-only
    unpickler reads as themselves: timm ``train.py``'s argparse ``Namespace``, and numpy arrays
    (``"classes": np.array(["cat", "dog"])``, as torch's ``weights_only`` docs allow them; an
    object array's items still go through the same restricted unpickler)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [t for t in vars(getattr(np, "dtypes", object)).values() if isinstance(t, type)]
    return [argparse.Namespace, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _inert_checkpoint(path: Path) -> tuple[dict[str, Any], list[str]] | None:
    """A checkpoint dict whose metadata names classes netlens does not import (Lightning's
    hyper_parameters with a Hydra config, say), read with those classes inert (see
    :mod:`netlens.models.inert_pickle`), and those classes; None unless it holds a state_dict."""
    from .inert_pickle import load_inert
    from .weights import _state_dict_of

    read = load_inert(path, allowed=_plain_data())
    if read is None or not isinstance(read[0], dict) or _state_dict_of(read[0]) is None:
        return None
    return read


def _is_pickle(path: Path) -> bool:
    """True for a torch zip archive or a well-formed pickle stream (parsed, never executed)."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    try:
        with path.open("rb") as fh:
            for _ in pickletools.genops(fh):
                pass
    except Exception:  # noqa: BLE001 - anything unparsable is simply not a pickle
        return False
    return True


def default_preprocess(model: nn.Module, arch: str | None = None) -> Preprocess:
    """The model's own preprocessing (see :func:`netlens.preprocess.preprocess_for`)."""
    return preprocess_for(model, arch)


def is_model_folder(path: Path) -> bool:
    """A folder holding ``card.json`` and ``model.safetensors`` (a zoo model's layout)."""
    return (path / "card.json").is_file() and (path / "model.safetensors").is_file()


def read_model_folder(path: Path) -> Any:
    """A model folder as the checkpoint dict its card and weights make (or the error)."""
    import json

    from safetensors.torch import load_file

    from .checkpoint import FORMAT, VERSION

    try:
        card = json.loads((path / "card.json").read_text())
        state = load_file(str(path / "model.safetensors"))
    except Exception:  # noqa: BLE001 - unreadable card or weights: one line
        return ModelLoadError(f"{display_path(path)}: card.json or model.safetensors is damaged")
    if not isinstance(card, dict):
        return ModelLoadError(f"{display_path(path)}/card.json is not a model card (a JSON object)")
    keys = ("arch", "arch_kwargs", "classes", "preprocess")
    return {
        "format": FORMAT,
        "version": VERSION,
        **{k: card.get(k) for k in keys},
        "state_dict": state,
        "record": card,
    }


def recorded_preprocess(d: dict[str, Any], where: str) -> Preprocess:
    """A spec recorded in a checkpoint or card; its source says so (and where it came from)."""
    recorded = d.get("source")
    return Preprocess.from_dict({**d, "source": f"{where} ({recorded})" if recorded else where})


# -- built-in loaders ------------------------------------------------------------------------
def load_netlens_checkpoint(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A netlens checkpoint (see :mod:`netlens.models.checkpoint`): validated, then built only
    when the model its metadata describes fits the weights in the file."""
    if not is_checkpoint(req.payload):
        return None
    meta = read_checkpoint(req.payload, source, req.host, build_arch=req.arch)
    try:
        pre = (
            recorded_preprocess(meta.preprocess, "netlens checkpoint") if meta.preprocess else None
        )
    except NetlensError as exc:
        raise ModelLoadError(f"{display_path(source.name)}: {exc}") from None
    arch, user_code = (req.arch, True) if req.arch else (meta.arch, False)
    model = build_checkpoint_model(meta, req.host, source, arch=arch, user_code=user_code)
    load_state(model, meta.state_dict, source)
    card = {"arch": meta.arch, "arch_kwargs": meta.arch_kwargs, "record": meta.record}
    if source.is_dir():  # a model folder: its card is the model card
        card = {**meta.record, **card}
    return LoadedModel(model, pre or preprocess_for(model, arch), meta.classes, card)


# -- entry point -----------------------------------------------------------------------------
def load(
    source: str | Path | nn.Module | Any = None,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    classes: list[str] | str | Path | None = None,
    label_map: dict[str, Any] | str | Path | None = None,
    trust: bool = False,
    device: str | torch.device | None = None,
    host: PluginHost | None = None,
    task: str | None = None,
    output: str | int | None = None,
    preprocess: Any = None,
    input_size: int | tuple[int, ...] | None = None,
    example: torch.Tensor | None = None,
    size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
    crop_mode: str | None = None,
    channel_order: str | None = None,
) -> Lens:
    """Load a model into a :class:`Lens`.

    Args:
        source: a file path, ``zoo:NAME``, an ``nn.Module``, a fastai ``Learner``, or None for
            the default zoo model.
        arch: architecture for a bare state_dict: a timm name, ``tv:NAME``, a netlens arch, or
            your own ``path/to/file.py:ClassName`` / ``package.module:factory`` (runs that code).
        arch_kwargs: keyword arguments for the architecture (``{"width": 64}``).
        num_classes: override the class count read off the state_dict's head.
        classes: class names in output order: a list, or a file (one name per line, a JSON
            list, ``{index: name}`` or ``{name: index}``); checked against the model's outputs.
        label_map: data label → model class name or index (a dict or file), for data whose
            folder names or CSV labels name the model's classes otherwise.
        trust: allow unpickling a whole module (runs code from the file).
        device: where to run; default CUDA when available, else CPU.
        task: ``multiclass``, ``multilabel``, ``binary``, ``regression`` or ``dense`` (default:
            read off the output's shape; see :mod:`netlens.targets`).
        output: which output to explain when forward returns a dict, tuple or object
            (default: the one ``netlens.save`` recorded, else logits, out or the first tensor).
        preprocess: a :class:`~netlens.preprocess.Preprocess`, a callable (PIL image → C×H×W
            tensor) or a dict of changes to the model's own preprocessing.
        input_size: the size the model takes (``28``, ``(28, 28)``, ``(1, 28, 28)``).
        example: an example input tensor; its shape sets the input size.
        size, crop_pct, mean, std, interpolation, crop_mode, channel_order: change one field
            of the model's own preprocessing (see ``docs/preprocessing.md``); ``channel_order=
            "bgr"`` for a model trained on OpenCV's B, G, R images.

    Example:
        >>> lens = netlens.load("model.pt", arch="tv:alexnet", classes=["cat", "dog"])
        >>> lens.cam("cat.jpg", target="cat").show()
    """
    from ..plugins.manager import PluginHost

    host = host or PluginHost()
    lens = _open(source, host, arch, dict(arch_kwargs or {}), num_classes, trust, device)
    lens.task, lens.output_key = (
        check_task(task) or lens.task,
        recorded_output(output, lens.card, lens),
    )
    own = lens.transform
    lens.transform = with_overrides(
        lens.transform,
        preprocess,
        input_size=input_size,
        example=example,
        size=size,
        crop_pct=crop_pct,
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_mode=crop_mode,
        channel_order=channel_order,
    )
    told = mean is not None or std is not None or _sets_normalisation(preprocess)
    if not told:  # values the user gave are the user's, even where they equal the guess
        _say_if_guessed(own, lens.transform, lens.name or "the model")
    if classes is not None:
        from ..data.labels import read_class_names
        from .classes import check_class_names

        names = read_class_names(classes)
        if len(names) == 1000:  # ImageNet's, as PyTorch Hub's imagenet_classes.txt lists them
            from .known_classes import imagenet_labels

            names = imagenet_labels(names) or names  # its two cranes told apart by WordNet ID
        check_class_names(names, lens.model, lens.transform)
        lens.classes = names
    if label_map is not None:
        from ..data.labels import read_label_map

        lens.label_map = read_label_map(label_map)
    from .fastai_learner import is_learner

    if device is None and (isinstance(source, nn.Module) or is_learner(source)):
        return lens  # the user's module stays where it is
    return lens.to(device)


def _sets_normalisation(preprocess: Any) -> bool:
    """Whether ``load``'s ``preprocess=`` is a dict of changes naming mean or std (a whole
    :class:`~netlens.preprocess.Preprocess` may carry the defaults: its values then tell)."""
    return isinstance(preprocess, Mapping) and bool({"mean", "std"} & set(preprocess))


def _say_if_guessed(own: Preprocess, used: Preprocess, name: str) -> None:
    """One warning line when the model records no preprocessing and the user set none: its
    normalisation (ImageNet's mean/std, or 0.5 for one channel) is netlens' guess, and a model
    trained on other inputs would be explained on inputs it never saw."""
    if not own.guessed_normalisation or used.function is not None:
        return
    if (used.mean, used.std) != (own.mean, own.std):
        return
    from ..preprocess.from_model import GUESSED

    tell = "say so (--mean/--std, --input-size; mean=, std=, input_size= in Python)"
    guess = [p for p in own.source.split("; ") if GUESSED in p][-1]
    why, known, _ = guess.rpartition(": normalisation ")
    if known:  # the weights say it was trained on other images, which are not known
        c = own.channels
        stats = f"mean {', '.join(f'{v:g}' for v in (own.mean or ())[:c])}, std "
        stats += ", ".join(f"{v:g}" for v in (own.std or ())[:c])
        warnings.warn(
            f"{name}: {why}, so it was trained on other images than the architecture's; "
            f"netlens guesses {stats}; if it was trained with other statistics, {tell}",
            NetlensWarning,
            stacklevel=3,
        )
        return
    norm = "ImageNet's mean/std" if len(own.mean or ()) == 3 else "mean 0.5, std 0.5"
    size = "no resize" if used.size is None else f"{used.size[0]}×{used.size[1]}"
    warnings.warn(
        f"{name} records no preprocessing: netlens guesses {norm} ({size}); if it was trained "
        f"on other inputs, {tell}",
        NetlensWarning,
        stacklevel=3,
    )


def _open(
    source: str | Path | nn.Module | None,
    host: PluginHost,
    arch: str | None,
    arch_kwargs: dict[str, Any],
    num_classes: int | None,
    trust: bool,
    device: str | torch.device | None,
) -> Lens:
    from ..lens import Lens

    if isinstance(source, nn.Module):
        card = {"arch": arch, "arch_kwargs": arch_kwargs} if arch else {}
        return Lens(source, preprocess_for(source, arch), host=host, card=card)
    from .fastai_learner import is_learner, learner_parts

    if is_learner(source):  # a fastai Learner in a notebook: its model, classes and pipeline
        got = learner_parts(source, "the Learner", own=False)
        return Lens(got.model, got.preprocess, got.classes, host=host, card=got.card, task=got.task)
    if source is None or str(source).startswith("zoo:"):
        from . import zoo

        given = [
            f
            for f, v in (("arch", arch), ("arch_kwargs", arch_kwargs), ("num_classes", num_classes))
            if v
        ]
        if given:  # silently unused, they would seem to have been applied
            flags = ", ".join(f"--{g.replace('_', '-')}" for g in given)
            raise ModelLoadError(
                f"{flags} {'build' if len(given) > 1 else 'builds'} a model from a state_dict, "
                "and a zoo model is built as its card says; leave "
                f"{'them' if len(given) > 1 else 'it'} out (or give a model file)"
            )

        name = None if source is None else str(source).removeprefix("zoo:")  # "zoo:": no name
        return zoo.load_zoo(name, host=host, device=device)
    loaded = load_file(
        Path(source),
        host,
        arch=arch,
        num_classes=num_classes,
        trust=trust,
        arch_kwargs=arch_kwargs,
    )
    loaded.model.eval()
    lens = Lens(
        loaded.model,
        loaded.preprocess,
        loaded.classes,
        host=host,
        card={"source": str(source), **loaded.card},
        task=loaded.task,
        name=Path(source).stem,
    )
    lens._found_classes = lens.classes  # read from the file: dropped, not refused, if unfit
    return lens


def load_file(
    path: Path,
    host: PluginHost,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Run the loaders on ``path`` until one answers."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path} (or use zoo:NAME; `netlens zoo list`)")
    if is_special_file(path):
        raise ModelLoadError(
            f"{display_path(path)} is a pipe or a device, not a model file; pass a model file"
        )
    if path.is_dir() and not is_model_folder(path) and not is_hf_folder(path):
        if (path / "config.json").is_file():
            raise ModelLoadError(
                f"{display_path(path)} holds config.json but no weights (model.safetensors or "
                "pytorch_model.bin); download or save them into it too"
            )
        from .shards import folder_index

        if folder_index(path) is None:  # (a torch.distributed.checkpoint folder: refused)
            raise ModelLoadError(
                f"{display_path(path)} is a folder; pass the model file inside it (a model "
                "folder holds card.json and model.safetensors, as netlens' zoo does, or "
                "config.json and the weights, as Hugging Face's save_pretrained writes)"
            )
    if arch:
        check_arch(arch, host)  # fail fast, before the file is read or anything is built
    req = LoadRequest(
        path, host, arch=arch, num_classes=num_classes, trust=trust, arch_kwargs=arch_kwargs or {}
    )
    if hasattr(host, "loader_entries"):  # entries say whose loader it is
        pairs = [(e.item, e) for e in host.loader_entries()]
    else:
        pairs = [(loader, None) for loader in host.loaders]
    failed: list[str] = []  # plugins' loaders that broke: said if no loader reads the file
    try:
        loaded = _first_answer(path, req, pairs, failed)
    except ModelLoadError as exc:  # netlens' own refusal: the plugin's failure may be the cause
        if not failed:
            raise
        raise _with_failures(exc, failed) from exc
    if loaded is not None:
        for line in failed:  # a later loader read it: each broken one is a warning
            warnings.warn(
                f"{line}; skipped, netlens' own loaders tried", NetlensWarning, stacklevel=2
            )
        return loaded
    if isinstance(req.payload, Exception):
        err = req.payload
        err = err if isinstance(err, ModelLoadError) else ModelLoadError(str(err))
        raise _with_failures(err, failed)
    from .weights import weight_sets

    sets = [str(k) for k in weight_sets(req.payload)]
    if len(sets) > 1:
        raise _with_failures(
            ModelLoadError(
                f"{path.name} holds several sets of weights (under "
                f"{', '.join(map(repr, sets[:4]))}); save the one you mean on its own "
                f"(torch.save(ckpt[{sets[0]!r}], path))"
            ),
            failed,
        )
    raise _with_failures(
        ModelLoadError(
            f"{path.name} is neither a netlens checkpoint, a state_dict nor a module; "
            "save with netlens.save(...) or torch.save(model.state_dict(), path)"
        ),
        failed,
    )


def _first_answer(
    path: Path, req: LoadRequest, pairs: list[tuple[Any, Any]], failed: list[str]
) -> LoadedModel | None:
    """The first loader's LoadedModel; a plugin's loader that raises (other than its own
    NetlensError refusal) or returns anything else is noted in ``failed`` and passed over."""
    for loader, entry in pairs:
        who = (entry.package or entry.plugin or "a plugin") if entry is not None else ""
        name = f"model loader '{entry.name}' ({who})" if entry is not None else "a model loader"
        if entry is None or entry.builtin:
            loaded = loader(path, req)
        else:  # a plugin's loader that breaks must not block the formats netlens reads
            try:
                loaded = loader(path, req)
            except NetlensError:  # its own one-line refusal of a file in its format
                raise
            except Exception as exc:  # noqa: BLE001 - the plugin's code, not the user's file
                text = " ".join(str(exc).split())[:160]
                failed.append(
                    f"{name} failed on {display_path(path)}: {type(exc).__name__}: {text}"
                )
                continue
        if loaded is None or isinstance(loaded, LoadedModel):
            if loaded is not None:
                return loaded
            continue
        got = type(loaded).__name__
        failed.append(
            f"{name} returned {'an' if got[:1].lower() in 'aeiou' else 'a'} {got} for "
            f"{display_path(path)}, not a netlens LoadedModel (or None: not its format)"
        )
    return None


def _with_failures(err: ModelLoadError, failed: list[str]) -> ModelLoadError:
    """``err`` with the plugins' loaders that broke on the file said first: a file in a
    plugin's format is the plugin's to read, so its failure is the likely cause."""
    if not failed:
        return err
    cause = "; ".join(failed)
    return type(err)(
        f"{cause} (update that plugin or report it to its authors); netlens' own loaders: {err}"
    )
