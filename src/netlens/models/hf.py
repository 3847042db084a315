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
                where, local_files_only=True, trust_remote_code=False
            )
            spec = spec_from_processor(processor)
            if spec is not None:
                return spec
        except ModelLoadError:
            raise
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

    The file is read as transformers reads it: its image processor is made from the folder
    (nothing downloaded, no code from the folder run) and its settings taken with the class's
    defaults, so an old feature-extractor file (``"size": 224``) and a key the file leaves out
    (MobileViT's ``do_flip_channel_order``) mean what they mean to transformers. Any rescale
    factor and EfficientNet's ``rescale_offset``/``include_top`` fold into the mean and std;
    MobileViT and PP-LCNet feed B, G, R (``channel_order="bgr"``); LeViT resizes the shorter
    side to 256/224 of its ``shortest_edge``; Perceiver crops before it resizes (as a resize
    then a crop here); no resize (``do_resize: false``) keeps each image's size. None when
    there is no such file or it does something a spec cannot say (a crop without a resize, a
    crop of another aspect than the resize); a :class:`~netlens.errors.ModelLoadError` for a
    crop larger than the resized image (transformers pads it with black).
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    raw = _json(path, display_path(folder.name))
    proc = _processor(raw, folder)
    try:
        return spec_from_processor(raw if proc is None else proc)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{display_path(folder.name)}: {exc}") from None


def spec_from_processor(d: Any) -> Preprocess | None:
    """An image processor, or its settings (``preprocessor_config.json``, ``to_dict()``), as
    a spec; see :func:`hf_preprocess`."""
    d = _settings(d)
    kind = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
    kind = kind.replace("FeatureExtractor", "ImageProcessor") or "image processor"
    crop = _size_dict(d.get("crop_size"), square=True) if d.get("do_center_crop") else None
    fields: dict[str, Any] = {}
    note = ""
    if not d.get("do_resize", True):  # each image at its own size (the first one's, here)
        if crop:
            return None
        return _spec(d, kind, {"size": None, "crop_pct": 1.0, "crop_mode": "squash"})
    size = _size_dict(d.get("size"), square=d.get("crop_pct") is None)
    if kind.startswith("PPLCNet") and d.get("resize_short"):  # shorter side, aspect kept
        size = {"shortest_edge": int(d["resize_short"])}
        if int(d.get("size_divisor") or 1) > 1 or not crop:
            return None  # each image at its own (rounded) size
        note = "; its longer side rounded, netlens' truncated: a pixel narrower at times"
    if size is None:
        return None
    if "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        fields = {"size": (h, w), "crop_pct": 1.0, "crop_mode": "squash"}
        if crop and kind.startswith("Perceiver"):
            # a centre square of size/crop_size of the shorter side, then resized to size:
            # the shorter side to size × crop_size / size, then a centre crop, here
            ch, cw = int(crop["height"]), int(crop["width"])
            if h != w or ch != cw or ch < h:
                return None
            fields = {"size": (h, w), "crop_pct": h / ch, "crop_mode": "center"}
            note = "; it crops, then resizes: here resized, then cropped (within a pixel)"
        elif crop:
            ch, cw = int(crop["height"]), int(crop["width"])
            if ch > h or cw > w:
                raise _padded(kind, (ch, cw), f"{h}×{w}")
            if ch * w != cw * h:
                return None
            fields = {"size": (ch, cw), "crop_pct": ch / h, "crop_mode": "squash"}
    elif "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if kind.startswith("Levit"):  # LeViT's resize: the shorter side to 256/224 of it
            s = int((256 / 224) * s)
        if d.get("crop_pct") is not None:  # ConvNeXt: shorter side to s / crop_pct, crop s
            pct = float(d["crop_pct"]) if s < 384 else 1.0
            fields = {
                "size": (s, s),
                "crop_pct": pct,
                "crop_mode": "center" if s < 384 else "squash",
            }
        elif crop and int(crop["height"]) == int(crop["width"]):
            c = int(crop["height"])
            if c > s:
                raise _padded(kind, (c, c), f"a shorter side of {s}")
            fields = {"size": (c, c), "crop_pct": c / s, "crop_mode": "center"}
        else:
            return None
    else:
        return None
    return _spec(d, kind, fields, note)


# what an image processor does unless told otherwise, when its to_dict() leaves it out (None)
_FLAGS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_flip_channel_order")


def _settings(d: Any) -> dict[str, Any]:
    """A processor's settings as transformers reads them: made from its class (the folder's
    file names it) with the class's defaults, sizes as dicts; the file as it is, its plain
    number sizes made dicts, when transformers does not know the class."""
    proc = d if not isinstance(d, dict) and callable(getattr(d, "to_dict", None)) else None
    if proc is None:
        proc = _processor(d)
    if proc is None:
        return dict(d)
    out = dict(proc.to_dict())
    for key in _FLAGS:  # to_dict() drops the Nones: MobileViT's do_normalize is None
        if out.get(key) is None:
            out[key] = bool(getattr(proc, key, None))
    return out


def _processor(d: dict[str, Any], folder: Path | None = None) -> Any:
    """The image processor transformers makes of a folder (from it alone: nothing downloaded,
    no code from the folder run) or of a settings dict; None when it cannot."""
    import warnings

    try:
        import transformers
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if folder is not None:
            try:
                return transformers.AutoImageProcessor.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=False
                )
            except Exception:  # noqa: BLE001 - a class transformers lacks, code in the folder
                pass
        name = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
        name = name.replace("FeatureExtractor", "ImageProcessor")
        if not re.fullmatch(r"[A-Za-z0-9]+ImageProcessor(Fast|Pil)?", name):
            return None
        try:
            return getattr(transformers, name).from_dict(dict(d))
        except Exception:  # noqa: BLE001 - not in this transformers, or settings it refuses
            return None


def _size_dict(size: Any, square: bool) -> dict[str, Any] | None:
    """A processor's size as transformers' ``get_size_dict`` makes it: a dict stays; one
    number is both sides (``square``) or the shorter side; ``[h, w]`` is both sides."""
    if isinstance(size, dict):
        return size
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        n = int(size)
        return {"height": n, "width": n} if square else {"shortest_edge": n}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    return None


def _padded(kind: str, crop: tuple[int, int], resized: str) -> ModelLoadError:
    """Why a processor whose centre crop is larger than its resized image is refused."""
    return ModelLoadError(
        f"its image processor ({kind}) resizes images to {resized}, then takes a "
        f"{crop[0]}×{crop[1]} centre crop, larger than the resized image, and fills the border "
        "with black; netlens does not add such borders: save the processor with a size at "
        "least as large as its crop_size (MobileViT's own checkpoints resize to 288 for a 256 "
        "crop)"
    )


def _spec(d: dict[str, Any], kind: str, fields: dict[str, Any], note: str = "") -> Preprocess:
    """The spec of a processor's geometry ``fields`` and its normalisation.

    A processor computes ``x = k·u − o`` from pixels ``u`` in [0, 1] (``k`` = 255 ×
    ``rescale_factor``: 2 for 1/127.5; ``o`` = 1 with EfficientNet's ``rescale_offset``), then
    ``(x − mean) / std``, divided by ``std`` once more with EfficientNet's ``include_top``. In
    a spec's terms that is mean ``(mean + o) / k`` and std ``std / k`` (× std). MobileViT's
    processor never normalises (it has no such step); it and PP-LCNet's flip R, G, B to B, G,
    R last, so the model's first channel is the one the processor's last mean and std were for.
    """
    normalize = d.get("do_normalize", True) and not kind.startswith("MobileViT")
    mean = [float(v) for v in _listed(d.get("image_mean"))] if normalize else [0.0] * 3
    std = [float(v) for v in _listed(d.get("image_std"))] if normalize else [1.0] * 3
    n = max(len(mean), len(std))
    mean, std = (mean * n if len(mean) == 1 else mean), (std * n if len(std) == 1 else std)
    k = 255.0 * float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 255.0
    o = 1.0 if d.get("do_rescale", True) and d.get("rescale_offset") else 0.0
    twice = normalize and bool(d.get("include_top")) and "EfficientNet" in kind
    bgr = bool(d.get("do_flip_channel_order")) or kind.startswith("PPLCNet")
    if bgr and n == 3:
        mean, std = mean[::-1], std[::-1]
    return Preprocess(
        mean=tuple((m + o) / k for m in mean),
        std=tuple(s / k * (s if twice else 1.0) for s in std),
        interpolation=_RESAMPLE.get(int(d.get("resample", 2)), "bilinear"),
        source=f"Hugging Face preprocessor_config.json ({kind}){note}",
        crop_offset="floor",  # transformers' center_crop: (size - crop) // 2
        channel_order="bgr" if bgr else "rgb",
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
