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
import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, UnsafeModelError
from ..naming import display_path
from ..preprocess import Preprocess
from .known_classes import imagenet_labels

if TYPE_CHECKING:
    from .load import LoadedModel, LoadRequest

__all__ = [
    "hf_class_names",
    "hf_task",
    "hf_model_preprocess",
    "hf_preprocess",
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
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def is_hf_folder(path: Path) -> bool:
    """A folder written by ``save_pretrained``: ``config.json`` next to the weights."""
    try:
        return (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHTS)
    except OSError:
        return False


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
    return LoadedModel(model, hf_preprocess(source), hf_class_names(config), card)


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
    downloaded); else its config's ``image_size`` with no crop. None without either."""
    where = str(getattr(model, "name_or_path", "") or "")
    if where and Path(where).is_dir():
        spec = hf_preprocess(Path(where))
        if spec is not None:
            return spec
    elif where:
        try:
            import transformers

            processor = transformers.AutoImageProcessor.from_pretrained(
                where, local_files_only=True
            )
            spec = spec_from_processor(processor.to_dict())
            if spec is not None:
                return spec
        except Exception:  # noqa: BLE001 - not in the cache: fall back to the config
            pass
    inner = getattr(model, "timm_model", None)  # transformers' TimmWrapper: timm's own config
    if getattr(inner, "pretrained_cfg", None):
        from ..preprocess.from_model import timm_spec

        spec = timm_spec(inner)
        return dataclasses.replace(spec, source=f"{spec.source}, of the timm model it wraps")
    size = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 2):
        h, w = (size, size) if isinstance(size, int) else size
        return Preprocess(
            size=(int(h), int(w)),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            crop_pct=1.0,
            source=f"Hugging Face config image_size {h}×{w}; mean/std 0.5 (transformers' "
            "default; guessed, as no image processor was found)",
        )
    return None


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


def hf_preprocess(folder: Path) -> Preprocess | None:
    """``preprocessor_config.json`` as a spec: resize (both sides, or the shorter side), an
    optional centre crop (ConvNeXt's ``crop_pct`` too), the resampling filter, mean and std.
    Any rescale factor and EfficientNet's ``rescale_offset``/``include_top`` fold into the
    mean and std; no resize (``do_resize: false``) keeps each image's size. None when there is
    no such file or it does something a spec cannot say (a crop without a resize, a crop of
    another aspect than the resize)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    return spec_from_processor(_json(path, display_path(folder.name)))


def spec_from_processor(d: dict[str, Any]) -> Preprocess | None:
    """An image processor's settings (``preprocessor_config.json``) as a spec; see
    :func:`hf_preprocess`."""
    kind = str(d.get("image_processor_type", "image processor"))
    crop = d.get("crop_size") if d.get("do_center_crop") else None
    fields: dict[str, Any] = {}
    if not d.get("do_resize", True):  # each image at its own size (the first one's, here)
        if crop:
            return None
        return _spec(d, kind, {"size": None, "crop_pct": 1.0, "crop_mode": "squash"})
    if not isinstance(d.get("size"), dict):
        return None
    size = d["size"]
    if "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        fields = {"size": (h, w), "crop_pct": 1.0, "crop_mode": "squash"}
        if crop:
            ch, cw = int(crop["height"]), int(crop["width"])
            if ch * w != cw * h:
                return None
            fields = {"size": (ch, cw), "crop_pct": ch / h, "crop_mode": "squash"}
    elif "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if d.get("crop_pct") is not None:  # ConvNeXt: shorter side to s / crop_pct, crop s
            pct = float(d["crop_pct"]) if s < 384 else 1.0
            fields = {
                "size": (s, s),
                "crop_pct": pct,
                "crop_mode": "center" if s < 384 else "squash",
            }
        elif crop and int(crop["height"]) == int(crop["width"]):
            c = int(crop["height"])
            fields = {"size": (c, c), "crop_pct": c / s, "crop_mode": "center"}
        else:
            return None
    else:
        return None
    return _spec(d, kind, fields)


def _spec(d: dict[str, Any], kind: str, fields: dict[str, Any]) -> Preprocess:
    """The spec of a processor's geometry ``fields`` and its normalisation.

    A processor computes ``x = k·u − o`` from pixels ``u`` in [0, 1] (``k`` = 255 ×
    ``rescale_factor``: 2 for 1/127.5; ``o`` = 1 with EfficientNet's ``rescale_offset``), then
    ``(x − mean) / std``, divided by ``std`` once more with EfficientNet's ``include_top``. In
    a spec's terms that is mean ``(mean + o) / k`` and std ``std / k`` (× std).
    """
    normalize = d.get("do_normalize", True)
    mean = [float(v) for v in _listed(d.get("image_mean"))] if normalize else [0.0] * 3
    std = [float(v) for v in _listed(d.get("image_std"))] if normalize else [1.0] * 3
    n = max(len(mean), len(std))
    mean, std = (mean * n if len(mean) == 1 else mean), (std * n if len(std) == 1 else std)
    k = 255.0 * float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 255.0
    o = 1.0 if d.get("do_rescale", True) and d.get("rescale_offset") else 0.0
    twice = normalize and bool(d.get("include_top")) and "EfficientNet" in kind
    return Preprocess(
        mean=tuple((m + o) / k for m in mean),
        std=tuple(s / k * (s if twice else 1.0) for s in std),
        interpolation=_RESAMPLE.get(int(d.get("resample", 2)), "bilinear"),
        source=f"Hugging Face preprocessor_config.json ({kind})",
        crop_offset="floor",  # transformers' center_crop: (size - crop) // 2
        **fields,
    )


def _listed(v: Any) -> list[Any]:
    """A processor's mean or std: a list, one number, or absent (transformers' 0.5)."""
    if v is None:
        return [0.5] * 3
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise ModelLoadError(f"{name}: {path.name} is not readable JSON") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{name}: {path.name} is not a JSON object")
    return data
