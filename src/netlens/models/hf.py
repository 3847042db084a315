"""Hugging Face model folders (``save_pretrained``: ``config.json`` and the weights), loaded by
``transformers`` from the folder alone (nothing is downloaded) as the class its author saved
when that is an image classifier or segmenter, else ``AutoModelForImageClassification``; with
the class names of ``config.id2label`` and the preprocessing of ``preprocessor_config.json`` as a
netlens spec (so overlays know the crop).

Weights are read as transformers reads them (safetensors, or ``pytorch_model.bin`` with
``weights_only``); a model whose config asks for code shipped in the folder (``auto_map``) runs
that code, so it needs ``trust=True``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, UnsafeModelError
from ..naming import display_path
from ..preprocess import Preprocess
from .hf_preprocess import (
    _json,
    config_size_spec,
    hf_preprocess,
    processor_spec,
    spec_from_processor,
    timm_wrapper_spec,
)
from .known_classes import imagenet_labels

if TYPE_CHECKING:
    from .load import LoadedModel, LoadRequest

__all__ = [
    "hf_class_names",
    "hf_task",
    "hf_model_preprocess",
    "hf_preprocess",
    "hf_folder_weights",
    "is_hf_folder",
    "load_hf_folder",
    "spec_from_processor",
]

WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_hf_folder(path: Path) -> bool:
    """A folder written by ``save_pretrained``: ``config.json`` next to the weights."""
    try:
        return (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHTS)
    except OSError:
        return False


def hf_folder_weights(source: Path) -> None:
    """Refuse, in one line, the weights file of a Hugging Face folder passed on its own (its
    ``model.safetensors``, a shard or the index of shards): the folder's config builds the
    model, which no ``--arch`` does for a transformers class."""
    from .shards import SHARD_NAME

    weights = source.name in WEIGHTS or SHARD_NAME.match(source.name) is not None
    if source.is_file() and weights and is_hf_folder(source.parent):
        raise ModelLoadError(
            f"{display_path(source.name)} is the weights file of the Hugging Face model folder "
            f"{display_path(source.parent)}: pass the folder"
        )


def load_hf_folder(source: Path, req: LoadRequest) -> LoadedModel | None:
    """The image classifier in a Hugging Face folder, its labels and its preprocessing."""
    from .load import LoadedModel

    if not source.is_dir() or not is_hf_folder(source):
        return None
    name = display_path(source.name)
    config = _json(source / "config.json", name)
    if config.get("auto_map") and not req.trust:
        raise UnsafeModelError(
            f"{name}: its config runs model code shipped in the folder (auto_map); load it only "
            "if you trust its author, with --trust (trust=True in Python)"
        )
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            f"{name} is a Hugging Face model folder; install transformers to load it "
            "(pip install transformers)"
        ) from None
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # its "Loading weights" bar, even with --quiet
    try:
        model, info = _model_class(transformers, config).from_pretrained(
            str(source),
            local_files_only=True,
            trust_remote_code=req.trust,
            output_loading_info=True,
        )
    except Exception as exc:  # noqa: BLE001 - not an image classifier, or damaged weights
        kind = config.get("model_type", "unknown")
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{name} does not load as a Hugging Face image classifier or segmenter (model_type "
            f"'{kind}'): {first}"
        ) from None
    finally:
        if shown:
            bars.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    if missing:  # transformers would fill them with random numbers: a head that was never trained
        raise ModelLoadError(
            f"{name} lacks {len(missing)} of the classifier's weights ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it holds a model without its trained "
            "classification head; explain a fine-tuned classifier"
        )
    model.eval()
    card = {
        "arch": f"hf:{type(model).__name__}",
        "hf_model_type": config.get("model_type"),
    }
    spec = hf_preprocess(source)
    if spec is not None:  # a grayscale model (num_channels=1) takes one channel
        from ..preprocess.from_model import _fit_channels

        spec = _fit_channels(spec, model)
    return LoadedModel(model, spec, hf_class_names(config), card)


def hf_task(config: Any) -> str | None:
    """How the model's outputs were read in training: its config's ``problem_type``, as
    transformers' loss reads it (multi-label: independent sigmoids), else None. Read off the
    model object by :class:`~netlens.lens.Lens`, however it was loaded."""
    kind = getattr(config, "problem_type", None)
    return _PROBLEM_TYPES.get(kind) if isinstance(kind, str) else None


# config.json's problem_type (how the Trainer read the logits) → netlens' task
_PROBLEM_TYPES = {
    "multi_label_classification": "multilabel",
    "regression": "regression",
}


_TASK_CLASSES = (
    "ForImageClassification",
    "ForImageClassificationWithTeacher",  # DeiT's distilled models
    "ForSemanticSegmentation",
)


def _model_class(transformers: Any, config: dict[str, Any]) -> Any:
    """The class the folder's author saved (``config.architectures``) when it is one of
    transformers' image classifiers or segmenters, else ``AutoModelForImageClassification``
    (which knows only classifiers: a SegFormer loaded through it lacks its head)."""
    for arch in config.get("architectures") or []:
        known = str(arch).endswith(_TASK_CLASSES)
        found = getattr(transformers, str(arch), None) if known else None
        if found is not None:
            return found
    return transformers.AutoModelForImageClassification


def hf_class_names(config: dict[str, Any]) -> list[str] | None:
    """A Hugging Face config's ``id2label`` as class names (ImageNet-1k's answer to their
    WordNet IDs too); None for transformers' placeholders (``LABEL_0``)."""
    labels = _labels(config)
    if labels and not config.get("id2label") and config.get("label_descriptions"):
        from .known_classes import described_labels  # a TimmWrapper's, as timm's Hub folders

        named = described_labels(labels, config["label_descriptions"])
        if named is not None:
            named.source = "label_names and label_descriptions"
            return named
    known = imagenet_labels(labels) if labels else None  # ImageNet's: WordNet-ID folders match
    if known is not None:
        known.source = "id2label (ImageNet-1k's classes; WordNet IDs from timm)"
    return known or (_distinct(labels) if labels else None)


def hf_model_preprocess(model: Any) -> Preprocess | None:
    """The preprocessing of a transformers model object: its image processor's, read from
    the folder it was loaded from, or from transformers' local cache for a hub name (never
    downloaded); a TimmWrapper's ``pretrained_cfg``; else its config's ``image_size`` with no
    crop and a guessed normalisation (a warning line says so). None without any of these."""
    config = getattr(model, "config", None)
    recorded = getattr(config, "pretrained_cfg", None)
    if (
        getattr(config, "model_type", None) == "timm_wrapper"
        and isinstance(recorded, dict)
        and recorded
    ):
        return timm_wrapper_spec(recorded, getattr(config, "architecture", None))
    where = str(getattr(model, "name_or_path", "") or "")
    if where and Path(where).is_dir():
        spec = hf_preprocess(Path(where))
        if spec is not None:
            return spec
    elif where:
        try:
            import transformers

            processor = transformers.AutoImageProcessor.from_pretrained(
                where, local_files_only=True, trust_remote_code=False
            )
        except Exception:  # noqa: BLE001 - not in the cache: fall back to the config
            processor = None
        if processor is not None and not isinstance(processor, dict):
            try:
                return processor_spec(processor)
            except ModelLoadError as exc:
                raise ModelLoadError(f"{where}: {exc}") from None
    inner = getattr(model, "timm_model", None)  # transformers' TimmWrapper: timm's own config
    if getattr(inner, "pretrained_cfg", None):
        from ..preprocess.from_model import timm_spec

        spec = timm_spec(inner)
        return dataclasses.replace(spec, source=f"{spec.source}, of the timm model it wraps")
    return config_size_spec(getattr(config, "image_size", None))


def _labels(config: dict[str, Any]) -> list[str] | None:
    """``id2label`` in index order, else ``label_names`` (transformers' TimmWrapper keeps its
    labels there); None for transformers' placeholders (``LABEL_0``)."""
    if not config.get("id2label") and isinstance(config.get("label_names"), list):
        from .recorded_classes import as_names

        return as_names(config["label_names"])
    raw = config.get("id2label") or {}
    try:
        labels = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None
    names = [labels.get(i, "") for i in range(len(labels))]
    placeholder = all(re.fullmatch(rf"LABEL_{i}", n) for i, n in enumerate(names))
    if not names or placeholder or not all(names):
        return None
    return names


def _distinct(names: list[str]) -> list[str]:
    """Labels that name two classes (ImageNet's "crane") with the index of each."""
    count = Counter(names)
    return [n if count[n] == 1 else f"{n} ({i})" for i, n in enumerate(names)]
