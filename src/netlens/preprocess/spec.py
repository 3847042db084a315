"""The model's own preprocessing: the :class:`Preprocess` spec, and where it comes from.

A spec says how an image becomes the tensor a model takes: input size, channels, resize and
crop (``crop_pct``, ``crop_mode``), interpolation, mean/std, and *where that came from*
(``source``: "timm data config of resnet50.a1_in1k", "torchvision ResNet18_Weights.IMAGENET1K_V1
transforms", "netlens checkpoint", "user override (size)"...), so every output can record it.

Two engines apply a spec; both resize anti-aliased:

- ``timm``: timm's own ``create_transform`` built from the spec (for timm models), on a PIL
  image, so netlens' input equals timm's to the bit;
- ``netlens``: torchvision's functional ops on a PIL image (what a torchvision weights
  transform does to a PIL image): shorter side to ``floor(size / crop_pct)``, centre crop to
  ``size``, scale to [0, 1], normalise. ``crop_mode="squash"`` (the default when
  ``crop_pct >= 1`` and no mode is given) resizes straight to ``size``. A ``crop_pct`` above 1
  (timm's VOLO at 448 and 512 px: 1.15) resizes below ``size``: the crop pads with black (0
  before normalisation), as torchvision's ``CenterCrop`` pads.

``size=None`` means the input size is unknown: nothing is resized, and a batch takes its size
from its first image (:meth:`Preprocess.sized_like`). :func:`preprocess_for` finds a model's
own spec; :mod:`netlens.models.load` applies user overrides on top.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import NetlensError
from .engines import (
    call_function,
    huge_resize,
    resize_crop,
    resized_hw,
    timm_transform,
    to_pil,
    to_uint8,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocess", "SizeFromFirstImage"]

MAX_SIDE = 4096  # a model input side; 4096² RGB float32 is already 200 MB per image
MAX_CROP_PCT = 1.25  # above 1 the image is padded; no published checkpoint goes past 1.15
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming", "area")
CROP_MODES = ("center", "squash", "border")
ENGINES = ("netlens", "timm")


def _pair(size: Any) -> tuple[int, int] | None:
    """``224``, ``[224, 224]``, ``(3, 224, 224)`` → ``(224, 224)``; None stays None."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    vals = [int(v) for v in size]
    if len(vals) == 1:
        vals *= 2
    if len(vals) not in (2, 3) or min(vals) < 1:
        raise NetlensError(f"an input size is H,W (or C,H,W), positive, e.g. 224; got {size}")
    return (vals[-2], vals[-1])


def _floats(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return (float(values),)
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input, and where that was learnt.

    Args:
        size: the (H, W) the model takes; None: unknown (no resize; a batch takes the size of
            its first image).
        channels: 1 (grayscale) or 3 (RGB).
        mean, std: per-channel normalisation of [0, 1] pixels; None: none (custom functions).
        crop_pct: the centre crop's share of the resized image (timm's ``crop_pct``); above 1
            (at most 1.25) the resized image is smaller than ``size`` and padded with black.
        interpolation: ``bilinear``, ``bicubic``, ``nearest``, ``lanczos``, ``box``, ``hamming``
            (``area`` is ``box``).
        crop_mode: ``center`` (shorter side, then centre crop), ``squash`` (both sides, then
            centre crop), ``border`` (timm only); None: ``squash`` when ``crop_pct >= 1``, else
            ``center``.
        engine: ``netlens`` or ``timm`` (timm's own ``create_transform``).
        source: where this spec came from (recorded in every output).
        function: a user's callable, PIL image → C×H×W tensor, used instead of all the above
            (with ``channel_order="bgr"`` its output is taken to be B, G, R: pictures flip it).
        crop_offset: where a centre crop starts when the margin is odd: ``round`` (torchvision,
            timm) or ``floor`` (Hugging Face image processors).
        channel_order: ``rgb``, or ``bgr`` for a model trained on images as OpenCV reads them
            (``cv2.imread`` without a conversion) or converted from Caffe; ``mean`` and ``std``
            are then in the model's order (B, G, R).

    Example:
        >>> pre = Preprocess(size=(224, 224), crop_pct=0.875, interpolation="bicubic")
        >>> pre(np.zeros((480, 640, 3), np.uint8)).shape
        torch.Size([3, 224, 224])
    """

    size: tuple[int, int] | None = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    crop_mode: str | None = None
    engine: str = "netlens"
    source: str = "netlens defaults"
    crop_offset: str = "round"
    channel_order: str = "rgb"
    function: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "size", _pair(self.size))
        set_(self, "mean", _floats(self.mean))
        set_(self, "std", _floats(self.std))
        set_(self, "crop_pct", float(self.crop_pct))
        if self.interpolation == "area":
            set_(self, "interpolation", "box")
        problem = self._problem()
        if problem:
            raise NetlensError(f"preprocessing: {problem}")

    def _problem(self) -> str | None:
        if int(self.channels) < 1:
            return f"channels must be at least 1, not {self.channels}"
        if not 0.0 < self.crop_pct <= MAX_CROP_PCT:  # NaN fails too
            return (
                f"crop_pct must be in (0, {MAX_CROP_PCT:g}], not {self.crop_pct:g} (the crop's "
                "share of the resized image; above 1 the image is padded, as timm's 1.15 for "
                "VOLO at 448 px)"
            )
        if self.interpolation not in INTERPOLATIONS:
            known = ", ".join(INTERPOLATIONS)
            return f"unknown interpolation '{self.interpolation}' (known: {known})"
        if self.crop_mode not in (None, *CROP_MODES):
            return f"unknown crop_mode '{self.crop_mode}' (known: {', '.join(CROP_MODES)})"
        if self.crop_offset not in ("round", "floor"):
            return f"unknown crop_offset '{self.crop_offset}' (known: round, floor)"
        if self.channel_order not in ("rgb", "bgr"):
            return f"unknown channel_order '{self.channel_order}' (known: rgb, bgr)"
        if self.channel_order == "bgr" and int(self.channels) != 3:
            return f"channel_order 'bgr' needs 3 channels, not {self.channels}"
        if self.engine not in ENGINES:
            return f"unknown engine '{self.engine}' (known: {', '.join(ENGINES)})"
        if self.crop_mode == "border" and self.engine != "timm":
            return "crop_mode 'border' needs engine='timm'"
        if (self.mean is None) != (self.std is None):
            return "give both mean and std, or neither"
        if not all(math.isfinite(v) for v in (*(self.mean or ()), *(self.std or ()))):
            return f"mean and std must be finite numbers, got {self.mean} and {self.std}"
        if self.std is not None and min(self.std) <= 0:
            return f"std must be positive, got {list(self.std)}"
        # the bounds a checkpoint's record is held to: beyond them float32 inputs are all 0
        # (std 1e300 overflows to inf) or inf/NaN (std 1e-300 underflows to 0)
        if max(abs(v) for v in (*(self.mean or ()), *(self.std or ()), 0.0)) > 1e4:
            return f"mean and std must be within ±10000, got {self.mean} and {self.std}"
        if self.std is not None and min(self.std) < 1e-6:
            return f"std must be at least 1e-6 (pixels are in [0, 1]), got {list(self.std)}"
        return None

    # -- geometry --------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The crop mode in effect (``crop_mode`` or its default)."""
        return self.crop_mode or ("squash" if self.crop_pct >= 1.0 else "center")

    @property
    def resize_size(self) -> tuple[int, int] | None:
        """The size images are resized to before the crop (floor(size / crop_pct))."""
        if self.size is None:
            return None
        return tuple(math.floor(s / self.crop_pct + 1e-6) for s in self.size)  # type: ignore[return-value]

    def crop_start(self, rh: int, rw: int) -> tuple[int, int]:
        """(top, left) of the centre crop in an image resized to ``rh`` × ``rw``; negative
        where the image is smaller than the crop and padded (``crop_pct > 1``, ``border``)."""
        h, w = self.size  # type: ignore[misc]
        return self._offset(rh, h), self._offset(rw, w)

    def _offset(self, resized: int, crop: int) -> int:
        if self.crop_offset == "floor":  # transformers' center_crop (padding: ceil before)
            return (resized - crop) // 2
        if resized < crop:  # torchvision's CenterCrop (timm's CenterCropOrPad): floor before
            return -((crop - resized) // 2)
        return int(round((resized - crop) / 2.0))

    def crop_box(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where the model's input lies in an image of ``image_hw``: (top, bottom, left, right)."""
        h0, w0 = image_hw
        if self.size is None or self.function is not None:
            return 0, h0, 0, w0
        nh, nw = resized_hw((h0, w0), self)
        h, w = self.size
        top, left = self.crop_start(nh, nw)
        sy, sx = nh / h0, nw / w0
        return (
            *_span(top / sy, (top + h) / sy, h0),
            *_span(left / sx, (left + w) / sx, w0),
        )

    def input_box(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where the image lies in the model's input: (top, bottom, left, right) in input
        pixels. All of it, unless the image was padded (timm's ``border`` mode fits the
        longer side and pads the shorter; ``crop_pct > 1`` resizes below the input size):
        then the rows or columns between the pads."""
        if self.size is None or self.function is not None:
            return 0, image_hw[0], 0, image_hw[1]
        h, w = self.size
        nh, nw = resized_hw(image_hw, self)
        top, left = self.crop_start(nh, nw)
        return max(0, -top), min(h, nh - top), max(0, -left), min(w, nw - left)

    # -- applying --------------------------------------------------------------------------
    def __call__(self, image: Any) -> torch.Tensor:
        """One image (H×W×C uint8 RGB array, or PIL) → the normalised C×H×W float tensor."""
        img = to_uint8(image, self.channels)
        if self.function is not None:
            return call_function(self.function, to_pil(img))
        if self.engine == "timm" and self.size is not None and not huge_resize(img.shape[:2], self):
            x = timm_transform(self._timm_key())(to_pil(img))  # normalised in RGB order
            x = x if x.shape[0] == self.channels else x[: self.channels]
            return x.flip(0) if self.channel_order == "bgr" else x
        if self.size is not None and not self._is_identity(img.shape[:2]):
            img = resize_crop(img, self)
        x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div(255.0)
        return self._normalize(x.flip(0) if self.channel_order == "bgr" else x)

    def _is_identity(self, hw: tuple[int, int]) -> bool:
        return tuple(hw) == self.size and tuple(hw) == resized_hw(hw, self)

    def statistics(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and std applied to each of ``channels`` input channels, in the order the
        model takes them (one value for all when one is given; 0 and 1 when none is)."""
        if self.mean is None or self.std is None:
            return (0.0,) * channels, (1.0,) * channels
        return _per_channel(self.mean, channels), _per_channel(self.std, channels)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        mean, std = (torch.tensor(v, dtype=x.dtype).view(-1, 1, 1) for v in self.statistics(len(x)))
        return x.sub_(mean).div_(std)

    def _timm_key(self) -> tuple[Any, ...]:
        mean = _per_channel(self.mean or (0.0,), self.channels)
        std = _per_channel(self.std or (1.0,), self.channels)
        if self.channel_order == "bgr":  # timm normalises RGB: the model's B, G, R stats reversed
            mean, std = mean[::-1], std[::-1]
        return (
            (self.channels, *self.size),  # type: ignore[misc]
            self.interpolation,
            mean,
            std,
            self.crop_pct,
            self.crop_mode or "center",
        )

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """A preprocessed C×H×W tensor (or a batch of one, 1×C×H×W: what
        ``lens.preprocess(image)`` gives) back to an H×W×3 uint8 RGB array (for overlays)."""
        from ..errors import NetlensError
        from ..images import to_channels

        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 3:
            raise NetlensError(
                f"denormalize takes one image, C×H×W or 1×C×H×W, not {tuple(x.shape)}; "
                "pass x[i] for image i of a batch"
            )
        arr = x.detach().float().cpu().numpy().transpose(1, 2, 0)
        stats = len(self.mean) if self.mean is not None else 0
        if 1 < stats < arr.shape[2]:  # RGB + near-infrared: the channels the stats describe
            arr = arr[:, :, :stats]
        c = arr.shape[2]
        if self.mean is None or self.std is None:  # unknown normalisation: stretch to [0, 1]
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo + 1e-12)
        else:
            arr = arr * np.asarray(_per_channel(self.std, c), np.float32)
            arr = arr + np.asarray(_per_channel(self.mean, c), np.float32)
        if self.channel_order == "bgr" and c == 3:  # a user's function too: it feeds B, G, R
            arr = arr[:, :, ::-1]  # the model's B, G, R back to R, G, B
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return to_channels(arr, 3)

    # -- variants --------------------------------------------------------------------------
    def sized_like(self, image_hw: tuple[int, int]) -> Preprocess:
        """This spec with the input size of an image (for a model that does not say its size)."""
        h, w = int(image_hw[0]), int(image_hw[1])
        base = self.source.replace("; input size unknown", "")
        src = f"{base}; input size {h}×{w} from the first image (others resized to it)"
        return dataclasses.replace(self, size=(h, w), source=src)

    def override(self, **changes: Any) -> Preprocess:
        """This spec with the user's ``changes`` (None values ignored); the source says so."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        unknown = sorted(set(given) - set(self.__dataclass_fields__))
        if unknown:
            raise NetlensError(f"unknown preprocessing option(s): {', '.join(unknown)}")
        note = ", ".join(f"{k}={_show(v)}" for k, v in given.items() if k != "source")
        source = given.pop("source", None) or f"{self._base(given)} + user override ({note})"
        return dataclasses.replace(self, **given, source=source)

    def _base(self, given: dict[str, Any]) -> str:
        """The source a user's override builds on: a guess it replaces is no longer said (a
        saved spec keeps its source, and a guess recorded there would be warned of again)."""
        from .from_model import GUESSED

        parts = self.source.split("; ")
        if "mean" in given and "std" in given:  # the normalisation is the user's now
            parts = [_user_given(p) if GUESSED in p else p for p in parts]
            parts = [p for p in parts if not p.startswith("mean/std averaged over channels")]
        if "size" in given:
            parts = [p for p in parts if p != "input size unknown"]
        return "; ".join(parts)

    @property
    def guessed_normalisation(self) -> bool:
        """Whether the mean/std are netlens' guess (the model recorded none and the user gave
        none); a spec saved by an older netlens says the guess and the override after it."""
        from .from_model import GUESSED

        if self.function is not None or GUESSED not in self.source:
            return False
        after = self.source.rsplit(GUESSED, 1)[1]
        return not ("user override (" in after and "mean=" in after and "std=" in after)

    # -- description -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description of the preprocessing, with where it came from."""
        d: dict[str, Any] = {
            "source": self.source,
            "engine": "function" if self.function is not None else self.engine,
            "size": list(self.size) if self.size else None,
            "channels": self.channels,
            # as applied: one per channel (a 1-channel model given ImageNet's three: their mean)
            "mean": list(_per_channel(self.mean, self.channels)) if self.mean is not None else None,
            "std": list(_per_channel(self.std, self.channels)) if self.std is not None else None,
            "crop_pct": self.crop_pct,
            "crop_mode": self.mode,
            "interpolation": self.interpolation,
            "resize": list(self.resize_size) if self.resize_size else None,
            "antialias": True,
        }
        if self.crop_offset != "round":
            d["crop_offset"] = self.crop_offset
        if self.channel_order != "rgb":
            d["channel_order"] = self.channel_order
        if self.resize_size and self.function is None:
            d["resize_rule"] = self._resize_rule()
        if self.function is not None:  # it resizes and crops as it likes: netlens does not
            d["function"] = _qualname(self.function)
            d.update(crop_pct=None, crop_mode=None, interpolation=None, resize=None)
            d.pop("antialias")
        elif self.size is None:
            d["resize"] = "none: the input size is unknown, so images are used at their own size"
        return d

    def _resize_rule(self) -> str:
        """How ``resize`` is reached, in words (the same size means different geometries)."""
        rule = self._resize_words()
        if self.crop_pct > 1.0 and self.mode != "border":
            rule += ", padded with black where the resized image is smaller (crop_pct > 1)"
        return rule

    def _resize_words(self) -> str:
        rh, rw = self.resize_size  # type: ignore[misc]
        h, w = self.size  # type: ignore[misc]
        if self.mode == "squash":
            return f"both sides to {rh}×{rw} (the aspect ratio is not kept), then a {h}×{w} crop"
        if self.engine == "timm" and self.mode == "border":
            return (
                f"one scale so the image fits inside {rh}×{rw} (timm's ResizeKeepRatio, "
                f"longest), then a {h}×{w} centre crop, padded where the image is smaller"
            )
        if self.engine == "timm" and rh != rw:
            return (
                f"one scale so the image covers {rh}×{rw} (timm's ResizeKeepRatio), then a "
                f"{h}×{w} centre crop"
            )
        if rh != rw:
            return f"both sides to {rh}×{rw} (the aspect ratio is not kept), then a {h}×{w} crop"
        return f"the shorter side to {rh}, then a {h}×{w} centre crop"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """A spec from :meth:`to_dict` output (or an older netlens checkpoint's dict)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "function"}
        if known.get("engine") not in ENGINES:
            known.pop("engine", None)
        known["size"] = _pair(known.get("size"))
        return cls(**known)

    def describe(self) -> str:
        """One line: what is done to an image, and where that came from."""
        if self.function is not None:
            return f"{_qualname(self.function)} ({self.source})"
        if self.size is None:
            geo = "no resize (input size unknown)"
        else:
            (h, w), (rh, rw) = self.size, self.resize_size or self.size
            geo = f"{self.mode} {h}×{w}" + (f" from {rh}×{rw}" if (rh, rw) != (h, w) else "")
        norm = "" if self.mean is None else f", mean {_show(self.mean)}, std {_show(self.std)}"
        order = ", BGR" if self.channel_order == "bgr" else ""
        return f"{geo}, {self.interpolation}{norm}{order} ({self.source})"


class SizeFromFirstImage:
    """Apply a spec of unknown size: the first image sets the size for the rest of a batch."""

    def __init__(self, spec: Preprocess) -> None:
        self.spec = spec
        self.resolved: Preprocess | None = None

    def __call__(self, image: Any) -> torch.Tensor:
        if self.resolved is None:
            self.resolved = self.spec.sized_like(np.asarray(image).shape[:2])
        return self.resolved(image)


# -- helpers ---------------------------------------------------------------------------------
def _show(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + ")"
    return str(v)


def _user_given(part: str) -> str:
    """A source's "ImageNet mean/std (guessed)" part (after "why: ", if any) as the user's."""
    why, sep, _ = part.rpartition(": ")
    return f"{why}: mean/std user-given" if sep else "mean/std user-given"


def _qualname(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"


def _per_channel(values: tuple[float, ...], c: int) -> tuple[float, ...]:
    """One value per channel of ``c``: a single value repeated; any other count that is not
    ``c`` averaged (ImageNet's three for a one-channel model: 0.449/0.226), as timm's loader
    does (``timm.data.loader.adapt_to_chs``) for a model built with ``in_chans=1``."""
    if len(values) == c:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * c
    return (float(np.mean(values)),) * c


def _span(start: float, stop: float, size: int) -> tuple[int, int]:
    """Pixels ``start..stop`` of an axis of ``size``, rounded, at least one pixel wide: a crop
    of a 1-pixel-thin image's middle rounds both ends to one spot."""
    a, b = max(0, round(start)), min(size, round(stop))
    if b <= a:
        a = min(a, size - 1)
        b = a + 1
    return a, b
