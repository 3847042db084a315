"""The engines that apply a :class:`~netlens.preprocess.Preprocess` spec to one image.

``resize_crop``: torchvision's functional ops on a PIL image (anti-aliased PIL filters), as a
torchvision weights transform does to a PIL image; ``timm_transform``: timm's own
``create_transform`` for a spec; ``call_function``: a user's callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import NetlensError

if TYPE_CHECKING:
    from .spec import Preprocess


def to_uint8(image: Any, channels: int) -> np.ndarray:
    """Any image → an H×W×channels uint8 array."""
    from ..images import to_channels

    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        f = arr.astype(np.float32)
        arr = np.clip((f * 255.0 if f.max(initial=0) <= 1.0 else f) + 0.5, 0, 255).astype(np.uint8)
    return to_channels(arr, channels)


def to_pil(img: np.ndarray) -> Any:
    """An H×W×C uint8 array → a PIL image (mode L for one channel)."""
    from PIL import Image

    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)


def resized_hw(hw: tuple[int, int], spec: Preprocess) -> tuple[int, int]:
    """The size before the crop, as the spec's engine resizes: torchvision's ``resize`` (a
    non-square size squashes), or timm's eval transform, which keeps the aspect ratio for a
    non-square size (``ResizeKeepRatio``: the shorter side to its target) and in ``border``
    mode fits the longer side (then pads)."""
    h0, w0 = hw
    rh, rw = spec.resize_size  # type: ignore[misc]
    if (
        spec.engine == "timm"
        and spec.mode in ("center", "border")
        and (rh != rw or spec.mode == "border")
    ):
        ratios = (h0 / rh, w0 / rw)
        ratio = max(ratios) if spec.mode == "border" else min(ratios)
        return round(h0 / ratio), round(w0 / ratio)
    if spec.mode == "squash" or rh != rw:
        return rh, rw
    short, long = (h0, w0) if h0 <= w0 else (w0, h0)
    new_long = int(rw * long / short)
    return (rh, new_long) if h0 <= w0 else (new_long, rh)


def resize_crop(img: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Anti-aliased PIL resize, then a centre crop: torchvision's ops on a PIL image.

    An extreme aspect ratio (the resize would make more than :data:`HUGE_RESIZE` pixels, 256
    MP: 768 MB of RGB) is cropped and resized in one step instead (:func:`box_resize_crop`,
    within one grey level), so memory never exceeds the output.
    """
    if huge_resize(img.shape[:2], spec):
        return box_resize_crop(img, spec)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    pil = to_pil(img)
    rh, rw = spec.resize_size  # type: ignore[misc]
    target = [rh, rw] if spec.mode == "squash" or rh != rw else [rh]
    pil = F.resize(pil, target, interpolation=InterpolationMode(spec.interpolation))
    h, w = spec.size  # type: ignore[misc]
    top, left = spec.crop_start(pil.height, pil.width)
    pil = F.crop(pil, top, left, h, w)  # torchvision's centre crop, with the spec's offset
    out = np.asarray(pil)
    return out.reshape(*out.shape[:2], img.shape[2])


def box_resize_crop(img: np.ndarray, spec: Preprocess) -> np.ndarray:
    """The centre crop's box in source pixels resized straight to the output (PIL's
    ``resize(box=...)``): the same geometry as resize-then-crop, within one grey level (PIL's
    two passes round in between), with no intermediate larger than the output. Where the
    resized image is smaller than the crop (``crop_pct > 1``) the rest is black, as
    torchvision's ``CenterCrop`` pads."""
    from PIL import Image

    pil = to_pil(img)
    h0, w0 = img.shape[:2]
    rh, rw = resized_hw((h0, w0), spec)
    h, w = spec.size  # type: ignore[misc]
    top, left = spec.crop_start(rh, rw)
    y0, y1, x0, x1 = max(0, -top), min(h, rh - top), max(0, -left), min(w, rw - left)
    sy, sx = rh / h0, rw / w0
    box = ((left + x0) / sx, (top + y0) / sy, (left + x1) / sx, (top + y1) / sy)
    how = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
        "lanczos": Image.Resampling.LANCZOS,
    }[spec.interpolation]
    part = np.asarray(pil.resize((x1 - x0, y1 - y0), how, box=box))
    out = np.zeros((h, w, img.shape[2]), np.uint8)
    out[y0:y1, x0:x1] = part.reshape(*part.shape[:2], img.shape[2])
    return out


# pixels a resize before the crop may make (256 MP: 768 MB of uint8 RGB); beyond, the crop
# comes first (box_resize_crop, within one grey level of the reference's resize-then-crop)
HUGE_RESIZE = 1 << 28


def huge_resize(hw: tuple[int, int], spec: Preprocess, limit: int = HUGE_RESIZE) -> bool:
    """Whether resizing before the crop would make more than ``limit`` pixels (an extreme
    aspect ratio: a 20×7000 strip makes 224×78400, 17.6 MP, well within), so the crop must
    come first."""
    if spec.size is None:
        return False
    rh, rw = resized_hw(hw, spec)
    return rh * rw > limit


@lru_cache(maxsize=32)
def timm_transform(key: tuple[Any, ...]) -> Callable[[Any], torch.Tensor]:
    """timm's own eval transform for a spec (cached: building it is not free)."""
    from ..models.factory import import_timm

    create_transform = import_timm().data.create_transform

    input_size, interpolation, mean, std, crop_pct, crop_mode = key
    return create_transform(
        input_size=input_size,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
    )


def call_function(fn: Callable[[Any], Any], pil: Any) -> torch.Tensor:
    """A user's preprocessing function on a PIL image; its C×H×W tensor, checked.

    A Hugging Face image processor (the model's own, say) is called as transformers calls it
    (``processor(images=pil, return_tensors="pt")``) and its ``pixel_values`` taken; any
    function returning such a dict (a ``BatchFeature``) is read the same way."""
    if _is_image_processor(fn):
        out = fn(images=pil, return_tensors="pt")
    else:
        out = fn(pil)
    if isinstance(out, Mapping) and "pixel_values" in out:
        out = out["pixel_values"]
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out)
    if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[0] == 1:
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NetlensError(
            f"the preprocessing function {_function_name(fn)} returned {got}; it must turn a "
            "PIL image into a C×H×W tensor"
        )
    return out.float()


def _function_name(fn: Any) -> str:
    """A callable's name for a message: its own, else its type's (never its repr, which for
    an image processor is its whole JSON)."""
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def _is_image_processor(fn: Any) -> bool:
    """A transformers image processor (or feature extractor): it takes ``images=`` and
    answers a dict of ``pixel_values``."""
    made_by_transformers = any(
        str(getattr(c, "__module__", "")).startswith("transformers.") for c in type(fn).__mro__
    )
    return made_by_transformers and callable(getattr(fn, "preprocess", None))
