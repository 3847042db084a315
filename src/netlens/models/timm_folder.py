"""timm's Hugging Face Hub folders: ``config.json`` naming a timm ``architecture`` beside
``model.safetensors`` or ``pytorch_model.bin``.

Every ``timm/NAME.TAG`` model on the Hub is laid out so (``huggingface-cli download
timm/resnet50.a1_in1k --local-dir r50``), and ``timm.models.push_to_hf_hub``/``save_for_hf``
write it for fine-tuned models. transformers' timm wrapper fails on these folders ("got multiple
values for keyword argument 'num_classes'"), so the folder is read as timm's own Hub loader
reads it (``timm.models.load_model_config_from_hf``): the architecture built with its
``model_args`` and class count, the ``pretrained_cfg`` data config (input size, crop, mean/std of
that tag), the ``label_names`` it records. Nothing is downloaded; the weights are read as netlens
reads any weights file (safetensors, or ``weights_only``), and the architecture and its options
pass the same checks as a checkpoint's (registry names only, allowed options, size on meta).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelLoadError
from ..naming import display_path
from ..preprocess.from_model import timm_spec
from .classes import output_count
from .known_classes import described_labels
from .recorded_classes import recorded_class_names

if TYPE_CHECKING:
    from .load import LoadedModel, LoadRequest

__all__ = ["is_timm_folder", "load_timm_folder"]

# the pretrained_cfg fields that are the data config (never files, URLs or hub ids)
DATA_KEYS = ("tag", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def is_timm_folder(config: dict[str, Any]) -> bool:
    """A timm config (``architecture``), not a transformers one (``model_type``)."""
    return isinstance(config.get("architecture"), str) and "model_type" not in config


def load_timm_folder(source: Path, req: LoadRequest) -> LoadedModel | None:
    """The timm model a Hub folder holds, with its tag's preprocessing and its label names."""
    from .arch_options import check_arch_kwargs, check_arch_name
    from .hf import _json

    if not source.is_dir() or not (source / "config.json").is_file():
        return None
    where = display_path(source.name)
    config = _json(source / "config.json", where)
    if not is_timm_folder(config):
        return None
    weights = next(
        (source / f for f in ("model.safetensors", "pytorch_model.bin") if (source / f).is_file()),
        None,
    )
    if weights is None:  # (sharded weights: transformers' loader says what it can)
        return None
    arch = "timm:" + check_arch_name(config["architecture"], f"{where}/config.json").removeprefix(
        "timm:"
    )  # timm's name, whatever else goes by it
    kwargs = check_arch_kwargs(config.get("model_args") or {}, f"{where}/config.json")
    n = config.get("num_classes", kwargs.get("num_classes"))
    if isinstance(n, int) and not isinstance(n, bool):
        kwargs["num_classes"] = n
    from .weights import _from_state, _state_dict_of

    payload = dataclasses.replace(req, source=weights).payload  # read as any weights file is
    if isinstance(payload, ModelLoadError):
        raise payload
    if isinstance(payload, Exception):  # a pickle beyond tensors, in a folder of weights
        raise ModelLoadError(f"{where}/{weights.name} holds more than tensors; check the folder")
    state = _state_dict_of(payload)
    if state is None:
        raise ModelLoadError(f"{where}/{weights.name} is not a state_dict")
    _check_size(arch, kwargs, state, req, where)

    asked = dataclasses.replace(req, arch_kwargs={**kwargs, **req.arch_kwargs})
    loaded = _from_state(state, weights, asked, arch=arch)
    cfg = config.get("pretrained_cfg")
    model = loaded.model
    if isinstance(cfg, dict) and isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, **_data_config(cfg)}
        loaded.preprocess = timm_spec(model)
    loaded.classes = recorded_class_names(
        config, lambda: output_count(model), f"{where}/config.json"
    )
    if loaded.classes is not None and list(loaded.classes) == config.get("label_names"):
        # IDs (WordNet's for ImageNet) named by their descriptions, as timm's own ImageNetInfo
        named = described_labels(list(loaded.classes), config.get("label_descriptions"))
        if named is not None:
            named.source = f"{where}/config.json's label_names and label_descriptions"
            loaded.classes = named
    loaded.card["timm_tag"] = model.pretrained_cfg.get("tag") if cfg else None
    return loaded


def _check_size(
    arch: str, kwargs: dict[str, Any], state: dict[str, torch.Tensor], req: LoadRequest, where: str
) -> None:
    """The folder chose the architecture and its options: what they build is sized against
    the weights actually there before anything is allocated."""
    from .factory import create_arch
    from .meta import shapes_on_meta

    rest = {k: v for k, v in kwargs.items() if k != "num_classes"}
    n = kwargs.get("num_classes")
    shapes = shapes_on_meta(lambda: create_arch(arch, n, req.host, **rest))
    if shapes is not None and shapes.far_larger_than(state):
        raise ModelLoadError(
            f"{where}/config.json describes a model of {shapes.nbytes >> 20} MiB, far more than "
            "its weights hold; the config does not belong to these weights"
        )


def _data_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The data-config fields of a Hub ``pretrained_cfg``, with plain values only."""
    out: dict[str, Any] = {}
    for key in DATA_KEYS:
        value = cfg.get(key)
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        if isinstance(value, (str, int, float)) or numbers:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out
