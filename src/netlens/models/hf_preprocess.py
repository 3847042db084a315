"""A Hugging Face model's preprocessing as a netlens spec: its image processor's
(``preprocessor_config.json``, or a processor object), transformers' TimmWrapper's
``pretrained_cfg`` (in ``config.json``), or, with neither, its config's ``image_size`` with
transformers' default normalisation, marked as netlens' guess.

Split out of :mod:`netlens.models.hf`, which re-exports :func:`hf_preprocess` and
:func:`spec_from_processor`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..naming import display_path
from ..preprocess import Preprocess

__all__ = [
    "config_size_spec",
    "hf_preprocess",
    "processor_spec",
    "spec_from_processor",
    "timm_wrapper_spec",
]

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


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
    then a crop here); no resize (``do_resize: false``) keeps each image's size. A processor
    that resizes keeping each image's aspect ratio and crops nothing (the shorter side without a
    centre crop, ``longest_edge``) is called as transformers calls it (a spec cannot say it;
    its mean, std and filter are recorded). None when there is no such file; a
    :class:`~netlens.errors.ModelLoadError` for a crop a spec cannot place (larger than the
    resized image, of another aspect than its resize).
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    raw = _json(path, display_path(folder.name))
    proc = _processor(raw, folder)
    try:
        return processor_spec(raw if proc is None else proc)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{display_path(folder.name)}: {exc}") from None


def spec_from_processor(d: Any) -> Preprocess | None:
    """An image processor, or its settings (``preprocessor_config.json``, ``to_dict()``), as
    a spec; None for a resize a spec cannot say (each image keeps its own aspect ratio, nothing
    cropped: the processor itself must be called); see :func:`hf_preprocess`."""
    d = _settings(d)
    kind = _kind(d)
    geometry = _geometry(d, kind)
    if geometry is None:
        return None
    return _spec(d, kind, *geometry)


def processor_spec(processor: Any) -> Preprocess:
    """:func:`spec_from_processor`, or, for a resize a spec cannot say, a spec that calls the
    processor itself (as transformers calls it: ``processor(images=pil)["pixel_values"]``),
    with its mean, std and filter recorded; a :class:`~netlens.errors.ModelLoadError` when
    there is only a settings dict to call (transformers cannot make the processor here)."""
    spec = spec_from_processor(processor)
    if spec is not None:
        return spec
    d = _settings(processor)
    kind = _kind(d)
    what = _resize_words(d, kind)
    if isinstance(processor, dict):
        raise ModelLoadError(
            f"its image processor ({kind}) {what}, and crops nothing, which only the processor "
            "itself can do, and "
            f"this transformers cannot make a {kind}: upgrade transformers (pip install -U "
            "transformers), or save the processor with a centre crop (do_center_crop, crop_size)"
        )
    called = _pil_backend(processor)
    _dry_call(called, kind, d)
    spec = _spec(d, kind, {"size": None, "crop_pct": 1.0, "crop_mode": "squash"})
    source = (
        f"{spec.source}, called as transformers calls it (its PIL backend): it {what}, and "
        "crops nothing, which netlens' resize-and-crop cannot say"
    )
    return spec.override(function=called, source=source)


def _dry_call(processor: Any, kind: str, d: dict[str, Any]) -> None:
    """A processor netlens will call, called once on a small image: one that transformers
    itself cannot run with these settings (ViT's with only a ``longest_edge``) stops the load
    in one line rather than every image in a traceback."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processor(images=Image.new("RGB", (48, 32), (128, 128, 128)), return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - transformers refuses its own settings
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"its image processor ({kind}) fails on an image with its size {d.get('size')} "
            f"(transformers: {first}); save the processor with a size it accepts (height and "
            "width, or shortest_edge)"
        ) from None


def _pil_backend(processor: Any) -> Any:
    """The processor on transformers' PIL backend (its ``…Pil`` class, same settings), whose
    resize netlens' other specs equal to float rounding (the default torchvision backend is
    within two grey levels of it); the processor itself when there is none."""
    import warnings

    name = re.sub(r"(Fast|Pil)$", "", type(processor).__name__)
    if type(processor).__name__ == f"{name}Pil":
        return processor
    try:
        import transformers

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(transformers, f"{name}Pil").from_dict(processor.to_dict())
    except Exception:  # noqa: BLE001 - no PIL class in this transformers, or settings it refuses
        return processor


def timm_wrapper_spec(pretrained_cfg: dict[str, Any], architecture: str | None) -> Preprocess:
    """transformers' ``TimmWrapper``: the ``pretrained_cfg`` its ``config.json`` records,
    resolved as its ``TimmWrapperImageProcessor`` resolves it (timm's ``resolve_data_config``
    with no model: what the record leaves out takes timm's defaults) and applied by timm's
    own transform, as netlens applies a timm model's data config."""
    from ..preprocess.from_model import timm_data_spec
    from .factory import import_timm

    data = import_timm().data
    dc = data.resolve_data_config(dict(pretrained_cfg), model=None, verbose=False)
    name = f" of {architecture}" if architecture else ""
    return timm_data_spec(
        dc,
        f"Hugging Face config.json pretrained_cfg{name} (transformers' TimmWrapper), "
        "as timm's data config",
    )


def config_size_spec(size: Any) -> Preprocess | None:
    """A transformers config's ``image_size`` (no image processor): a straight resize to it,
    mean/std 0.5 (transformers' processors' default), marked as netlens' guess so a warning
    line says so; None for a size that is not one number or two."""
    from ..preprocess.from_model import GUESSED

    if not (isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 2)):
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return Preprocess(
        size=(int(h), int(w)),
        mean=(0.5,),  # one value for every channel: the warning then names it, not ImageNet's
        std=(0.5,),
        crop_pct=1.0,
        source=f"Hugging Face config image_size {h}×{w}; model records no preprocessing (no "
        f"image processor found): mean/std 0.5, transformers' default {GUESSED}",
    )


def _kind(d: dict[str, Any]) -> str:
    kind = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
    return kind.replace("FeatureExtractor", "ImageProcessor") or "image processor"


def _geometry(d: dict[str, Any], kind: str) -> tuple[dict[str, Any], str] | None:
    """A processor's resize and crop as spec fields and a note; None for a resize that keeps
    each image's aspect ratio and crops nothing; a ModelLoadError for a crop a spec cannot
    place."""
    crop = _size_dict(d.get("crop_size"), square=True) if d.get("do_center_crop") else None
    cropped = f"{crop['height']}×{crop['width']}" if crop and "height" in crop else "a"
    if not d.get("do_resize", True):  # each image at its own size (the first one's, here)
        if crop:
            raise _unplaced(kind, f"takes a {cropped} centre crop of each image, unresized")
        return {"size": None, "crop_pct": 1.0, "crop_mode": "squash"}, ""
    size = _size_dict(d.get("size"), square=d.get("crop_pct") is None)
    note = ""
    if kind.startswith("PPLCNet") and d.get("resize_short"):  # shorter side, aspect kept
        size = {"shortest_edge": int(d["resize_short"])}
        if int(d.get("size_divisor") or 1) > 1 or not crop:
            if crop:
                raise _unplaced(kind, f"{_resize_words(d, kind)}, then takes a {cropped} crop")
            return None  # each image at its own (rounded) size
        note = "; its longer side rounded, netlens' truncated: a pixel narrower at times"
    if size is not None and "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        fields = {"size": (h, w), "crop_pct": 1.0, "crop_mode": "squash"}
        if crop and kind.startswith("Perceiver"):
            # a centre square of size/crop_size of the shorter side, then resized to size:
            # the shorter side to size × crop_size / size, then a centre crop, here
            ch, cw = int(crop["height"]), int(crop["width"])
            if h != w or ch != cw or ch < h:
                raise _unplaced(kind, f"takes a {ch}×{cw} centre crop, then resizes it to {h}×{w}")
            fields = {"size": (h, w), "crop_pct": h / ch, "crop_mode": "center"}
            note = "; it crops, then resizes: here resized, then cropped (within a pixel)"
        elif crop:
            ch, cw = int(crop["height"]), int(crop["width"])
            if ch > h or cw > w:
                raise _padded(kind, (ch, cw), f"{h}×{w}")
            if ch * w != cw * h:
                raise _unplaced(
                    kind, f"resizes images to {h}×{w}, then takes a {ch}×{cw} centre crop"
                )
            fields = {"size": (ch, cw), "crop_pct": ch / h, "crop_mode": "squash"}
        return fields, note
    if size is not None and "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if kind.startswith("Levit"):  # LeViT's resize: the shorter side to 256/224 of it
            s = int((256 / 224) * s)
        if d.get("crop_pct") is not None:  # ConvNeXt: shorter side to s / crop_pct, crop s
            pct = float(d["crop_pct"]) if s < 384 else 1.0
            mode = "center" if s < 384 else "squash"
            return {"size": (s, s), "crop_pct": pct, "crop_mode": mode}, note
        if crop:
            c, cw = int(crop["height"]), int(crop["width"])
            if c != cw:
                raise _unplaced(
                    kind, f"resizes the shorter side to {s}, then takes a {c}×{cw} centre crop"
                )
            if c > s:
                raise _padded(kind, (c, c), f"a shorter side of {s}")
            return {"size": (c, c), "crop_pct": c / s, "crop_mode": "center"}, note
        return None
    if crop:
        raise _unplaced(kind, f"{_resize_words(d, kind)}, then takes a {cropped} centre crop")
    return None


def _resize_words(d: dict[str, Any], kind: str) -> str:
    """What a processor's resize does that a spec cannot say, in words."""
    if kind.startswith("PPLCNet") and d.get("resize_short"):
        div = int(d.get("size_divisor") or 1)
        tail = f", rounded to a multiple of {div}" if div > 1 else ""
        return (
            f"resizes the shorter side to {int(d['resize_short'])}{tail}, keeping the aspect ratio"
        )
    size = _size_dict(d.get("size"), square=False) or {}
    parts = []
    if "shortest_edge" in size:
        parts.append(f"the shorter side to {size['shortest_edge']}")
    if "longest_edge" in size:
        parts.append(f"the longer side to at most {size['longest_edge']}")
    said = " and ".join(parts) or f"to its size {d.get('size')}"
    return f"resizes {said}, keeping the aspect ratio"


def _unplaced(kind: str, what: str) -> ModelLoadError:
    """Why a processor whose crop a spec cannot place is refused."""
    return ModelLoadError(
        f"its image processor ({kind}) {what}, a crop netlens cannot place on the image: save "
        "the processor with a square crop_size (or size as height and width, and a crop of "
        "the same aspect), or load the model object with preprocess= a function of your own"
    )


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
