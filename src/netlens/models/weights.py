"""Bare weights loaded into an architecture (``arch``): state_dicts, however a training
framework wrapped them (``{"state_dict": ...}``, DataParallel's ``module.``, Lightning's
``model.`` prefix), and the weights inside TorchScript and ``torch.export`` files.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelLoadError, NetlensWarning, UnsafeModelError
from ..naming import display_path
from ..preprocess import preprocess_for
from .built_as import (
    headless,
    is_stem,
    is_timm,
    on_meta,
    replace_stem,
    set_module,
    single_linear_head,
    stem_channels,
)
from .classes import detector_state_classes
from .deploy_form import deployed, has_deploy_form, in_deploy_form
from .effective_weights import effective_state
from .factory import (
    aux_heads,
    check_arch,
    create_arch,
    head_num_classes,
    stale_aux_heads,
    tv_input_transform,
)
from .recorded_arch import arch_source, recorded_arch, recorded_preprocess
from .timm_args import with_args_yaml
from .timm_remap import timm_renamed
from .weight_sets import (  # noqa: F401 (weight_sets re-exported)
    _say_which_copy,
    _state_dict_of,
    packed_params,
    weight_sets,
)

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost
    from .load import LoadedModel, LoadRequest

__all__ = [
    "CompiledArchive",
    "compiled_kind",
    "fit_prefix",
    "load_compiled_archive",
    "load_state",
    "load_state_dict_file",
]


def load_state_dict_file(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A bare state_dict or safetensors file plus ``arch`` (or the architecture a training
    checkpoint records); classes read off the head, names and preprocessing off the record."""
    state = _state_dict_of(req.payload)
    if state is None:
        packed = packed_params(req.payload)
        if packed is not None:
            raise ModelLoadError(
                f"{source.name} is the state_dict of a dynamically quantized model ({packed}): "
                "save the float model's state_dict before quantize_dynamic, or pass the "
                "quantized module itself in Python (gradient methods refuse a quantized "
                "layer; --method scorecam works)"
            )
        return None
    state = effective_state(state, display_path(source.name))  # pruned / weight-normed layers
    _say_which_copy(req.payload, source)
    req.payload = with_args_yaml(req.payload, source, req)  # type: ignore[misc]  # timm's args.yaml
    recorded = recorded_arch(req.payload, state, source, req)
    if recorded is None and not req.arch and _fastai_saved(req.payload, state):
        raise ModelLoadError(
            f"{source.name} holds the weights fastai's learn.save() writes, without the Learner "
            "that built the model (a body and head of fastai's own); export the Learner instead "
            "(learn.export('export.pkl')) and explain that file, with --trust"
        )
    if recorded is None and not req.arch:
        from .hf import hf_folder_weights

        hf_folder_weights(source)  # the weights file of a Hugging Face folder: pass the folder
        raise ModelLoadError(
            f"{source.name} holds only weights (a state_dict); say which architecture with "
            "--arch NAME (a timm name like resnet18, tv:alexnet for torchvision, or a netlens "
            "arch like lenet5)"
        )
    where = arch_source(req.payload) if recorded is not None else ""
    try:
        loaded = _from_state(state, source, req, arch=recorded)
    except ModelLoadError as exc:
        if recorded is None:
            raise
        raise ModelLoadError(
            f"{exc}; {recorded} was built because the checkpoint's {where} names it (--arch "
            "NAME builds another)"
        ) from None
    if recorded is not None:
        loaded.card["arch_source"] = f"the checkpoint's {where}"
    if req.not_imported:
        loaded.card["not_imported"] = list(req.not_imported)
    recorded_preprocess(loaded, req.payload)
    return _with_recorded_classes(loaded, req.payload, source)


def _fastai_saved(payload: Any, state: dict[str, Any]) -> bool:
    """``learn.save()``'s file: ``{"model": state, "opt": ...}`` (or the bare state with
    ``with_opt=False``) of a ``vision_learner``'s ``Sequential(body, head)``."""
    if isinstance(payload, dict) and set(payload) not in ({"model", "opt"}, set(state)):
        return False
    tops = {k.split(".", 1)[0] for k in state}
    bn, fc = state.get("1.2.running_mean"), state.get("1.4.weight")  # fastai's create_head
    if tops != {"0", "1"} or bn is None or fc is None or fc.dim() != 2:
        return False
    return bn.shape[0] == fc.shape[1]  # BatchNorm1d(2n) before Linear(2n, ...): concat pool


def _with_recorded_classes(loaded: LoadedModel, payload: Any, source: Path) -> LoadedModel:
    """``loaded`` with the class names its checkpoint records (``class_to_idx`` and the like,
    see :mod:`netlens.models.recorded_classes`), when there are any that fit."""
    from .classes import output_count
    from .recorded_classes import recorded_class_names

    def count() -> int | None:
        return output_count(loaded.model) or output_count(loaded.model, loaded.preprocess)

    if isinstance(payload, dict):
        loaded.classes = recorded_class_names(payload, count, display_path(source.name))
    return loaded


def _from_state(
    state: dict[str, torch.Tensor],
    source: Path,
    req: LoadRequest,
    arch: str | None = None,
    compiled: bool = False,
) -> LoadedModel:
    """``arch`` (default ``req.arch``) built with ``state``'s class count, loaded with it.

    ``compiled``: ``state`` is a TorchScript or ``torch.export`` module's, whose state_dict
    also holds the non-persistent buffers (:func:`_without_unsaved`)."""
    from .load import LoadedModel

    given = state = effective_state(state, display_path(source.name))  # (no-op when done)
    arch = arch or req.arch
    assert arch
    check_arch(arch, req.host)
    assumed = tv_input_transform(arch, req.arch_kwargs)
    if assumed:
        warnings.warn(
            f"{arch} is built as torchvision builds it for its ImageNet weights, and for models "
            "fine-tuned from them (transform_input=True: it rescales its input itself); a model "
            "trained from scratch (weights=None) had transform_input=False: say so with "
            """--arch-kwargs '{"transform_input": false}'""",
            NetlensWarning,
            stacklevel=2,
        )
    kwargs = {**aux_heads(arch, state), **assumed, **req.arch_kwargs}
    kwargs.update(_image_size_of(arch, state, req.host, kwargs))
    n = req.num_classes or kwargs.pop("num_classes", None)
    prefix, renamed, fresh, stem = "", None, None, None
    if n is None:
        fresh = create_arch(arch, None, req.host, **kwargs)
        state = _without_unsaved(state, fresh) if compiled else state
        state, prefix = fit_prefix(state, fresh, source)
        renamed = timm_renamed(state, fresh)  # the original repository's names, timm's way
        state = renamed[0] if renamed else state
    if "in_chans" not in kwargs:  # a grayscale (or RGB + NIR) model of a 3-channel design
        stem = stem_channels(fresh if fresh is not None else on_meta(arch, n, req, kwargs), state)
    if n is None:  # the head is the last weight that differs, the stem aside
        head_state = {k: v for k, v in state.items() if not is_stem(k, stem)}
        n = detector_state_classes(head_state, fresh) or head_num_classes(head_state, fresh)
        if n is None and headless(state, fresh) and is_timm(arch, req.host):
            n = 0  # timm's num_classes=0: an embedding model, the head's weights not in the file
    stale = stale_aux_heads(arch, state, n)
    if stale:  # ImageNet's auxiliary heads beside a fine-tune's own: training-only, not built
        state = {k: v for k, v in state.items() if not k.startswith(stale)}
        kwargs["aux_logits"] = False
    if stem is not None and is_timm(arch, req.host):
        kwargs["in_chans"] = stem[1]  # timm builds the stem (and its data config) for them
    model = create_arch(arch, n, req.host, **kwargs)
    if stem is not None and "in_chans" not in kwargs:
        replace_stem(model, *stem)  # as the user did: model.conv1 = nn.Conv2d(1, 64, ...)
    if compiled:
        state = _without_unsaved(state, model, keep=True)
    if not prefix:
        state, prefix = fit_prefix(state, model, source)
    if renamed is None:
        renamed = timm_renamed(state, model)
        state = renamed[0] if renamed else state
    linear = single_linear_head(state, model)
    if linear is not None:  # model.classifier = nn.Linear(1280, 5), as fine-tuning scripts do
        set_module(model, *linear)
        warnings.warn(
            f"{display_path(source.name)}: {arch}'s head '{linear[0]}' was replaced by "
            f"{linear[1]} when it was trained, as the weights' names and shapes say; it is "
            "built so",
            NetlensWarning,
            stacklevel=2,
        )
    load_state(model, state, source)
    card = {"arch": arch, "arch_kwargs": {**kwargs, **({"num_classes": n} if n else {})}}
    if linear is not None:
        card["head_replaced"] = f"{linear[0]}: {linear[1]}"
    if prefix:
        card["state_dict_prefix"] = prefix
    if renamed:
        card["state_dict_renamed_by"] = renamed[1]
    if stale:
        card["not_loaded"] = f"auxiliary heads {', '.join(stale)} (used in training only)"
    if stem is not None and "in_chans" not in card["arch_kwargs"]:
        card["input_channels"] = f"{stem[0]} takes {stem[1]} channel(s), as the weights say"
    spec = preprocess_for(model, arch)
    if prefix:
        spec = _left_out(given, prefix, spec, card, source, arch)
    if stem is not None and req.arch_kwargs.get("in_chans") is None:  # trained on other images
        from ..preprocess.from_model import GUESSED

        why = f"the weights take {stem[1]} channel(s), not the architecture's 3"
        spec = spec.override(source=f"{spec.source}; {why}: normalisation {GUESSED}")
    return LoadedModel(model, spec, None, card)


def _without_unsaved(
    state: dict[str, torch.Tensor], model: nn.Module, keep: bool = False
) -> dict[str, torch.Tensor]:
    """``state`` without ``model``'s non-persistent buffers (``register_buffer(...,
    persistent=False)``: timm's LeViT ``attention_bias_idxs``, Swin's relative position
    index), which a TorchScript or ``torch.export`` module's state_dict holds and a strict
    load calls unexpected; only where the shapes match. ``keep``: the file's values are
    copied into the model's buffers first (they are what the compiled model ran with)."""
    unsaved = dict(model.named_buffers())
    for k in model.state_dict():
        unsaved.pop(k, None)
    drop = [
        k
        for k, v in state.items()
        if k in unsaved and unsaved[k] is not None and tuple(v.shape) == tuple(unsaved[k].shape)
    ]
    if not drop:
        return state
    if keep:
        with torch.no_grad():
            for k in drop:
                if state[k].dtype == unsaved[k].dtype:
                    unsaved[k].copy_(state[k])
    out = OrderedDict((k, v) for k, v in state.items() if k not in drop)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def _left_out(
    given: dict[str, torch.Tensor],
    prefix: str,
    spec: Any,
    card: dict[str, Any],
    source: Path,
    arch_name: str,
) -> Any:
    """The preprocessing, when :func:`fit_prefix` took ``prefix`` off and left other tensors
    out: a sibling normaliser's ``mean``/``std`` (``nn.Sequential(ImageNormalizer(m, s),
    net)`` saved whole: ``0.mean``, ``0.std`` beside ``1.*``) are the statistics the network
    was fed with, on pixels in [0, 1] (0..255 for statistics above 1), and a warning line says
    so; any other left-out tensors are listed in a warning line."""
    from ..models.input_norm import statistics_in

    dropped = [k for k in given if not k.startswith(prefix)]
    if not dropped:
        return spec
    name = display_path(source.name)
    card["state_dict_left_out"] = dropped
    found = statistics_in(given, dropped, spec.channels)
    rest = dropped
    if found is not None:
        owner, m_name, s_name, mean, std = found
        rest = [k for k in dropped if k not in (owner + m_name, owner + s_name)]
        scale = 255.0 if max(*mean, *std) > 1.0 else 1.0
        c = spec.channels
        mean = tuple(v / scale for v in mean) * (c if len(mean) == 1 else 1)
        std = tuple(v / scale for v in std) * (c if len(std) == 1 else 1)
        shown = f"mean {', '.join(f'{v:g}' for v in mean)}, std {', '.join(f'{v:g}' for v in std)}"
        of = " (of 0..255 pixels, divided by 255)" if scale == 255.0 else ""
        why = (
            f"{shown}: the file's '{owner}{m_name}'/'{owner}{s_name}'{of}, a normaliser "
            f"beside the network's '{prefix}' weights"
        )
        known = [p for p in spec.source.split("; ") if "(guessed)" not in p]
        spec = spec.override(mean=mean, std=std, source="; ".join([*known, why]))
        card["input_normalizer"] = f"{owner}{m_name}, {owner}{s_name}"
        warnings.warn(
            f"{name}: the file holds {arch_name}'s weights under '{prefix}' beside a normaliser's "
            f"'{owner}{m_name}'/'{owner}{s_name}': images are normalised with those ({shown}), "
            "not the architecture's own statistics (--mean/--std to override)",
            NetlensWarning,
            stacklevel=3,
        )
    if rest:
        shown_rest = ", ".join(rest[:6]) + (f" and {len(rest) - 6} more" if len(rest) > 6 else "")
        warnings.warn(
            f"{name}: {arch_name}'s weights are under '{prefix}'; {len(rest)} other tensor(s) "
            f"in the file are not part of it and are left out: {shown_rest}",
            NetlensWarning,
            stacklevel=3,
        )
    return spec


def _image_size_of(
    arch: str, state: dict[str, torch.Tensor], host: PluginHost, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``{"img_size": S}`` for a vision transformer trained at another size than its name's
    (timm's ``create_model("vit_base_patch16_224", img_size=384)``; ``{"image_size": S}`` for
    torchvision's ``vit_b_16(image_size=384)``): its position embedding holds S/patch × S/patch
    positions, which the architecture built at its default size would refuse to load. Empty
    when the size is given, the grid is not square, or the model has no such embedding."""
    from .factory import parse_user_arch

    tv = arch.startswith("tv:")
    key, option = ("encoder.pos_embedding", "image_size") if tv else ("pos_embed", "img_size")
    found = [k for k in state if k == key or k.endswith("." + key)]
    if option in kwargs or parse_user_arch(arch) or len(found) != 1:
        return {}
    try:
        rest = {k: v for k, v in kwargs.items() if k != "num_classes"}
        with torch.device("meta"):
            model = create_arch(arch, kwargs.get("num_classes"), host, **rest)
    except Exception:  # noqa: BLE001 - not buildable on meta: the load says what does not fit
        return {}
    if tv:  # one class token
        built = getattr(getattr(model, "encoder", None), "pos_embedding", None)
        patch, tokens = getattr(model, "patch_size", None), 1
    else:  # class (and distillation) tokens, unless they have no position of their own
        built = getattr(model, "pos_embed", None)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        no_position = getattr(model, "no_embed_class", False)
        tokens = 0 if no_position else getattr(model, "num_prefix_tokens", 0)
    held = state[found[0]].shape
    if not isinstance(built, torch.Tensor) or patch is None or built.shape == held:
        return {}
    if built.dim() != 3 or len(held) != 3 or built.shape[2] != held[2]:
        return {}
    cells = int(held[1]) - int(tokens)
    side = math.isqrt(max(cells, 0))
    if cells <= 0 or side * side != cells:
        return {}
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return {option: side * ph if ph == pw else (side * ph, side * pw)}


def _replaced_head(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[str, list[str]] | None:
    """The last module of ``model`` when its weights alone differ from ``state``'s (the
    classifier a fine-tuning script replaced): every other weight has its name and shape in
    the file. With the file's weight names under it; None when the difference is elsewhere."""
    skip = "num_batches_tracked"
    own = model.state_dict()
    ours = list(own)
    names = set(ours)
    missing = [k for k in ours if k not in state and not k.endswith(skip)]
    extra = [k for k in state if k not in names and not k.endswith(skip)]
    if not missing or not extra:
        return None
    module = ".".join(os.path.commonprefix([k.split(".")[:-1] for k in missing + extra]))
    if not module:
        return None
    first = next(i for i, k in enumerate(ours) if k.startswith(module + "."))
    if not all(k.startswith(module + ".") for k in ours[first:]):
        return None  # not the model's last module: not its head
    if any(k in state and state[k].shape != own[k].shape for k in ours[:first]):
        return None  # the body differs too
    return module, [k for k in extra if k.endswith(".weight")] or extra


def fit_prefix(
    state: dict[str, torch.Tensor], model: nn.Module, source: Path
) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` as ``model`` names its weights, and the prefix that was taken off.

    Training frameworks save the network under an attribute of their own module (PyTorch
    Lightning's ``self.model`` gives ``model.conv1.weight``, next to ``loss.weight`` and
    metrics). When ``model``'s names are not all in ``state`` but are, after one dotted prefix,
    the keys under that prefix are the weights (the rest is dropped). Unchanged when the names
    already fit or no prefix fits (the strict load then says what is missing); refused when
    several fit (``model.`` and an EMA copy's ``model_ema.module.``), as picking one would be a
    guess.
    """
    want = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if want <= state.keys():
        return state, ""
    prefixes = {
        ".".join(parts[:depth]) + "."
        for parts in (k.split(".") for k in state)
        for depth in range(1, min(len(parts), 4))
    }
    fits = [p for p in sorted(prefixes) if {p + k for k in want} <= state.keys()]
    if len(fits) > 1:
        raise ModelLoadError(
            f"{source.name} holds {type(model).__name__}'s weights more than once (under "
            f"{', '.join(repr(f) for f in fits)}); save the copy you mean as a bare state_dict "
            f"(keys such as '{next(iter(model.state_dict()), 'weight')}') and load that file"
        )
    if not fits:
        return state, ""
    p = fits[0]
    out = OrderedDict((k[len(p) :], v) for k, v in state.items() if k.startswith(p))
    meta = getattr(state, "_metadata", None)
    if meta is not None:  # module versions, keyed by module name ("model" → the root "")
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            (f"{k}.".removeprefix(p).removesuffix("."), v)
            for k, v in meta.items()
            if f"{k}.".startswith(p)
        )
    return out, p


@dataclass(frozen=True)
class CompiledArchive:
    """A ``torch.jit.save`` (TorchScript) or ``torch.export.save`` file: weights plus code."""

    kind: str


def compiled_kind(path: Path) -> str | None:
    """Which compiled format ``path`` holds (``TorchScript``, ``torch.export``; None for any
    other file), read off its zip archive's member names."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "TorchScript"
    if any(n.endswith("/archive_format") for n in names) and not any(
        n.endswith("/data.pkl") for n in names
    ):
        return "torch.export"
    return None


def load_compiled_archive(source: Path, req: LoadRequest) -> LoadedModel | None:
    """The weights of a TorchScript or ``torch.export`` file, loaded into ``arch``.

    Such a model runs as compiled code, with no Python modules to hook, so netlens needs the
    architecture; reading the file compiles its code, so it also needs ``trust=True``.
    """
    payload = req.payload
    if not isinstance(payload, CompiledArchive):
        return None
    name, kind = display_path(source.name), payload.kind
    if not req.arch:
        raise ModelLoadError(
            f"{name} is a {kind} file, which runs as compiled code without the Python layers "
            "netlens hooks; say which architecture it is with --arch NAME (and --trust) to read "
            "its weights into that"
        )
    if not req.trust:
        raise UnsafeModelError(
            f"{name} is a {kind} file, and reading it compiles the code it contains; read its "
            "weights only if you trust its author, with --trust (trust=True in Python)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "TorchScript":
                state = dict(torch.jit.load(str(source), map_location="cpu").state_dict())
            else:
                state = dict(torch.export.load(str(source)).state_dict)
    except Exception as exc:  # noqa: BLE001 - a damaged archive
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"cannot read {name} as a {kind} file: {why}") from None
    state = OrderedDict((k, v.detach()) for k, v in state.items() if isinstance(v, torch.Tensor))
    loaded = _from_state(state, source, req, compiled=True)
    loaded.card["weights_from"] = kind
    return loaded


def _with_versions(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with module versions for ``load_state_dict``: its own (``torch.save`` of a
    state_dict keeps them), else the model's current ones (safetensors files and netlens
    checkpoints keep none, and torchvision's MNASNet refuses weights without a version)."""
    if getattr(state, "_metadata", None) is not None:
        return state
    versioned = OrderedDict(state)
    versioned._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    return versioned


def _deploy_form(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> bool:
    """Load timm's reparameterized (deploy) weights (``*.reparam_conv.*``: RepVGG, MobileOne,
    FastViT after ``timm.utils.reparameterize_model``) into ``model`` reparameterized the same
    way, in place; False when ``state`` holds no such weights."""
    if not in_deploy_form(state):
        return False
    name = type(model).__name__
    if not has_deploy_form(model):
        raise ModelLoadError(
            f"the weights in {source.name} are reparameterized (deploy) weights (reparam_conv "
            f"keys, as timm.utils.reparameterize_model writes), which {name} has no form of; "
            "pass the architecture they came from (a timm RepVGG, MobileOne or FastViT) as --arch"
        )
    deployed(model)  # its random weights fused, then overwritten
    try:
        model.load_state_dict(_with_versions(state, model), strict=True)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).splitlines()[1:2] or [str(exc)])[0].strip()[:200].rstrip(".")
        raise ModelLoadError(
            f"the weights in {source.name} are reparameterized (deploy) weights (reparam_conv "
            f"keys) that do not fit {name} reparameterized either: {first}; check --arch (and "
            "--num-classes)"
        ) from None
    return True


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(_with_versions(state, model), strict=True)
    except (RuntimeError, ValueError) as exc:
        if _deploy_form(model, state, source):
            return
        head = _replaced_head(state, model)
        if head is not None:
            module, found = head
            raise ModelLoadError(
                f"the weights in {source.name} fit {type(model).__name__} but for its head "
                f"'{module}': the file has {', '.join(found[:3])} (a replaced classifier, such "
                f"as nn.Sequential(nn.Linear, nn.ReLU, ...)); build the model as it was trained "
                "with your own code: --arch yourfile.py:build_model (a function returning it)"
            ) from None
        first = str(exc).splitlines()[1:2] or [str(exc)]
        ours = list(model.state_dict())
        if ours and state and not state.keys() & set(ours):
            # not one name in common: say how each side names its weights
            reason = (
                f"its names look like '{next(iter(state))}', {type(model).__name__}'s like "
                f"'{ours[0]}'"
            )
        else:
            reason = first[0].strip()[:200].rstrip(".")  # torch's line ends in a full stop
        raise ModelLoadError(
            f"the weights in {source.name} do not fit {type(model).__name__}: {reason}; "
            "check --arch (and --num-classes, or --arch-kwargs for build options a state_dict "
            """does not record, such as '{"global_pool": "avg"}')"""
        ) from None
