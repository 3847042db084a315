"""Read, validate and preprocess images.

Images are read with OpenCV (every format it decodes: jpg/png/bmp/webp/tiff/gif/avif/jp2/pnm/
hdr...; grayscale, RGBA and 16-bit included) into H×W×3 (or H×W×1) uint8 RGB arrays, then
resized, centre-cropped and normalised per a :class:`Preprocess` spec. Wherever netlens takes
``images`` it accepts paths, a folder, numpy arrays, PIL images or an already preprocessed
N×C×H×W tensor (used as is).

Reading is bounded: the pixel count is read from the file's header and checked against a
limit (:func:`pixel_limit`, default 100 MP) before anything is decoded.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .errors import DataError, ImageError, NetlensWarning
from .image_decode import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    MAX_PIXELS_ENV,
    pixel_limit,
)
from .naming import display_path, safe_stem
from .preprocess.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess  # noqa: F401 (re-exported)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "Batch",
    "Preprocess",
    "first_readable",
    "list_images",
    "load_batch",
    "pixel_limit",
    "read_image",
]

# every still-image format OpenCV decodes (an animated GIF/WebP gives its first frame)
IMAGE_SUFFIXES = tuple(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .webp .tif .tiff .gif .avif .jp2 .pbm .pgm .ppm .pnm "
    ".pxm .pam .pfm .sr .ras .hdr .pic".split()
)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert an H×W[×C] uint8 RGB array to ``channels`` (1 or 3) channels."""
    if img.ndim == 2:
        img = img[:, :, None]
    have = img.shape[2]
    if have == channels:
        return img
    if channels not in (1, 3):
        raise ImageError(
            f"this model takes {channels}-channel inputs and an image has {have} (files are "
            "read as RGB or gray: a 4th band, alpha, is dropped, as PIL's convert('RGB') drops "
            f"it); pass the images as a preprocessed N×{channels}×H×W tensor"
        )
    if channels == 1:
        return pil_gray(img) if have >= 3 else img[:, :, :1]
    if have < 3:  # gray, or two bands (shown by the first)
        return np.repeat(img[:, :, :1], 3, axis=2)
    return img[:, :, :3]


def pil_gray(img: np.ndarray) -> np.ndarray:
    """An H×W×3 (or ×4: alpha ignored) uint8 RGB array as H×W×1 gray, by Pillow's integer
    formula ``(R·19595 + G·38470 + B·7471 + 0x8000) >> 16``: what ``convert("L")`` gives, and
    so torchvision's ``Grayscale`` and timm's ``input_img_mode="L"`` on PIL images (OpenCV's
    RGB2GRAY rounds one grey level apart on some pixels). In row blocks of about a million
    pixels, so a large photo never has a full-size 32-bit copy."""
    h, w = img.shape[:2]
    out = np.empty((h, w, 1), np.uint8)
    rows = max(1, (1 << 20) // max(1, w))
    for y in range(0, h, rows):
        part = img[y : y + rows].astype(np.uint32)
        luma = part[..., 0] * 19595 + part[..., 1] * 38470 + part[..., 2] * 7471 + 0x8000
        out[y : y + rows, :, 0] = luma >> 16
    return out


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file into an H×W×3 uint8 RGB array (H×W×1 stays grayscale).

    Alpha is dropped (as PIL's ``convert("RGB")`` drops it in torchvision's, timm's, Hugging
    Face's and fastai's loaders: a model sees what they fed it), 16-bit and float images are
    scaled to 8 bits, an animated GIF/WebP gives its first frame. The pixel count is read from
    the header first and must not exceed :func:`~netlens.image_decode.pixel_limit`
    (``max_pixels``, else the ``NETLENS_MAX_PIXELS`` environment variable, else 100 MP).
    Missing, empty, corrupt, oversized or unsupported files raise :class:`ImageError` with a
    one-line message.

    Example:
        >>> img = read_image("cat.jpg", max_pixels=50_000_000)  # doctest: +SKIP
    """
    from .image_decode import read_checked

    return read_checked(Path(path), max_pixels)


def first_readable(paths: Iterable[str | Path]) -> np.ndarray:
    """The first of ``paths`` that reads (a model of unknown input size takes its size).

    Unreadable files before it are passed by: they are skipped and reported where the images
    are read, as any unreadable file is. None readable: the first one's :class:`ImageError`."""
    first = None
    for path in paths:
        try:
            return read_image(path)
        except ImageError as exc:
            first = first or exc
    raise first or ImageError("no images given")


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix, any case) directly in ``folder`` and below, sorted; hidden ones
    left out (see :func:`is_hidden`), and so are netlens' own outputs (see :func:`_walk`).

    Symlinked folders are followed, as torchvision's ImageFolder follows them (``Path.rglob``
    does not before Python 3.13: their images were left out unsaid); each real folder is read
    once, so a link to an ancestor does not recurse forever. A dangling link named as an image
    is listed, as ImageFolder lists it: reading it fails, so it is reported with the other
    unreadable files instead of vanishing unsaid."""
    return _walk(Path(folder))[0]


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """The images under ``root`` (as :func:`list_images` gives them) and the netlens outputs
    left out: the files a ``NAME.manifest.json`` of their folder lists with their size, the
    overlays and figures of an earlier run (``netlens cam .`` twice: ``netlens-out/``; or
    ``-o`` an input folder). A photo beside them is kept: the manifest names netlens' files
    exactly, so a folder that holds both is never skipped whole."""
    found, own, seen = [], [], set()
    for top, dirs, names in os.walk(root, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:  # a dangling or unreadable link: nothing to list
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not is_hidden(Path(top, d), root)]
        listed = _netlens_outputs(Path(top), names)
        for n in names:
            if Path(n).suffix.lower() in IMAGE_SUFFIXES:
                mine = n in listed and _size(Path(top, n)) == listed[n]  # one stat, only if listed
                (own if mine else found).append(Path(top, n))
    return sorted(p for p in found if os.path.lexists(p) and not is_hidden(p, root)), sorted(own)


_MANIFEST = ".manifest.json"  # netlens.output.OutputSet's NAME.manifest.json


def _netlens_outputs(top: Path, names: list[str]) -> dict[str, int]:
    """File name → size of the files the netlens manifests in ``top`` list (an unreadable,
    oversized or foreign ``*.manifest.json`` lists nothing)."""
    listed: dict[str, int] = {}
    for n in names:
        if not n.endswith(_MANIFEST) or n.startswith(".") or _size(top / n) > 16 << 20:
            continue
        try:
            doc = json.loads((top / n).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or f"{doc.get('result')}{_MANIFEST}" != n:
            continue
        for f in doc.get("files") if isinstance(doc.get("files"), list) else []:
            if isinstance(f, dict) and isinstance(f.get("file"), str):
                if isinstance(f.get("bytes"), int):
                    listed[f["file"]] = f["bytes"]
    return listed


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -2  # never a listed size


def is_hidden(path: Path, root: Path) -> bool:
    """Whether a folder walk from ``root`` should pass ``path`` by: dot files and folders
    (``.DS_Store``, macOS's ``._photo.jpg`` resource forks, ``.ipynb_checkpoints`` copies) and
    the ``__MACOSX`` folder of zips made on a Mac. None of them holds the data's images."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def as_pixels(obj: Any) -> np.ndarray:
    """An image given in memory (array, PIL image, tensor of pixels) as H×W×3 or H×W×1 uint8,
    read as its file would be: C×H×W turned, 16-bit divided by 257 (as 16-bit gray files; a
    16-bit colour PNG's PIL image holds Pillow's 8-bit pixels already), alpha dropped, a PIL
    image turned upright by its EXIF orientation (as ``ImageOps.exif_transpose`` turns it)."""
    if _is_pil(obj):
        from .image_orientation import orient

        pixels = _pil_pixels(obj)  # loaded first: Pillow >= 13 turns a TIFF as it loads it
        return orient(pixels, _pil_orientation(obj))
    return _pixels(obj)


def _pil_pixels(im: Any) -> np.ndarray:
    """A PIL image's pixels as :func:`as_pixels` reads them, before its EXIF orientation."""
    return _pixels(_pil_plain(im))


def _pil_orientation(im: Any) -> int:
    """The EXIF orientation Pillow's ``exif_transpose`` turns ``im`` by (1: as it is)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": then there is no tag
            value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken block is "no orientation", never a crash
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pixels(obj: Any) -> np.ndarray:
    arr = np.asarray(obj)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # C×H×W given
    arr = _as_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be H×W or H×W×C (C = 1, 3 or 4), got {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3]) if arr.shape[2] == 4 else arr


def _pil_plain(im: Any) -> Any:
    """A PIL image in a mode whose array is pixels: palette, CMYK, YCbCr, LA... become RGB(A)
    (as arrays they are indices, four inks or other channels)."""
    if im.mode in ("RGB", "RGBA", "L", "I", "I;16", "F"):
        return im
    if im.mode == "1":
        return im.convert("L")
    alpha = im.mode in ("LA", "La", "PA", "RGBa") or "transparency" in im.info
    return im.convert("RGBA" if alpha else "RGB")


def _as_uint8(arr: np.ndarray, name: str = "") -> np.ndarray:
    """Pixels as uint8: uint16 divided by 257 (as 16-bit gray files are read), values in [0, 1]
    stretched to 0..255, others kept; values outside 0..255 (a normalised image, raw sensor
    counts) are refused, as clipping them would give a black or white picture. Float and
    32-bit image files are read by this rule too (``name``: the file, for messages)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        from .image_decode import warn_if_dark

        warn_if_dark(arr, "a 16-bit image array")
        return cv2.convertScaleAbs(arr, alpha=1 / 257)  # as image_decode reads 16-bit files
    what = f"image {name}" if name else "an image array"
    f = arr.astype(np.float32)
    if f.size and not np.isfinite(f).all():
        raise ImageError(f"{what} holds NaN or infinite values; pass finite pixels")
    lo, hi = float(f.min(initial=0)), float(f.max(initial=0))
    if lo < 0 or hi > 255:
        raise ImageError(
            f"{what}'s values run from {lo:.4g} to {hi:.4g}: netlens reads pixels as "
            "uint8 (0-255), uint16 (0-65535) or numbers in [0, 1] or [0, 255]; a normalised "
            "image goes in as a preprocessed N×C×H×W tensor"
        )
    f = f * 255.0 if hi <= 1.0 else f
    return (f + 0.5).astype(np.uint8)


@dataclass
class Batch:
    """Preprocessed images with their originals, names, and files that could not be read.

    ``originals[i]`` is the file's path for an image read from disk (read again when a picture
    needs it, so a folder of large photos is never held in memory), the H×W×3 array for an
    array given in memory, or None for a preprocessed tensor and for an image a preprocessing
    function made the input of (where that input lies in the image is unknown: pictures show
    the input itself, so a map is never drawn where the model did not look); :meth:`original`
    reads it.
    """

    tensor: torch.Tensor
    originals: list[np.ndarray | Path | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)  # each file's path; None in memory
    kept: list[int] | None = None  # each image's index among the inputs given (None: 0..N-1)

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def given(self) -> int:
        """How many inputs were given, the unreadable ones skipped (``errors``) included."""
        return len(self) if self.kept is None else len(self.kept) + len(self.errors)

    def original(self, i: int) -> np.ndarray | None:
        """Image ``i`` as H×W×3 uint8 as it was given (None for a tensor input)."""
        return load_original(self.originals[i])


def load_original(source: np.ndarray | Path | None) -> np.ndarray | None:
    """An original image: read again from its file, or the array itself."""
    if isinstance(source, Path):
        return to_channels(read_image(source), 3)
    return source


def _expand(images: Any) -> list[Any]:
    if isinstance(images, (str, Path)):
        p = Path(images)
        if p.is_dir():
            found, own = _walk(p)
            if not found and own:
                raise ImageError(
                    f"folder {display_path(p)} holds only netlens' own outputs ({len(own)} "
                    f"images its *.manifest.json files list, e.g. "
                    f"{display_path(own[0].relative_to(p))}), never read back as inputs; "
                    "give the folder of the images to explain"
                )
            if not found:
                raise ImageError(
                    f"no images in folder {display_path(p)} (looked for {FORMATS} files)"
                )
            return list(found)
        return [p]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, np.ndarray) or _is_pil(images):
        return [images]
    if isinstance(images, Iterable):
        out: list[Any] = []
        for item in images:
            out += _expand(item) if isinstance(item, (str, Path)) else [item]
        return out
    raise ImageError(f"cannot read images from a {type(images).__name__}; pass paths or arrays")


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.")


def load_batch(
    images: Any, preprocess: Preprocess, *, strict: bool = False, max_pixels: int | None = None
) -> Batch:
    """Turn ``images`` (paths, folder, arrays, PIL, or a preprocessed tensor) into a Batch.

    Unreadable files are skipped and reported in ``Batch.errors`` (one line each); with
    ``strict=True``, or when nothing at all could be read, the first error is raised.
    """
    if isinstance(images, torch.Tensor) and not images.is_floating_point():
        images = images.cpu().numpy()  # uint8 pixels (torchvision.io.read_image): an image
    if isinstance(images, torch.Tensor):
        if images.dim() > 4:
            raise ImageError(
                f"a {images.dim()}-d tensor {tuple(images.shape)} is not images: give an "
                "N×C×H×W batch or one C×H×W image (a video's N×C×T×H×W frames go one frame, "
                "or one batch of frames, at a time)"
            )
        t = images if images.dim() == 4 else images.unsqueeze(0)
        _warn_if_unnormalised(t, preprocess)
        return Batch(t, [None] * len(t), [f"image{i}" for i in range(len(t))])
    tensors, originals, names, errors, sources, kept = [], [], [], [], [], []
    items = _expand(images)
    stems = {safe_stem(item).casefold() for item in items if isinstance(item, (str, Path))}
    taken: set[str] = set()
    for i, item in enumerate(items):
        try:
            if isinstance(item, (str, Path)):
                arr, name = read_image(item, max_pixels=max_pixels), safe_stem(item)
            else:
                arr, name = as_pixels(item), f"image{i}"
        except ImageError as exc:
            if strict:
                raise
            errors.append(str(exc))
            continue
        tensors.append(preprocess(arr))
        kept.append(i)
        if (
            getattr(preprocess, "function", None) is not None
        ):  # where its input lies in the image is its secret
            originals.append(None)
        else:
            originals.append(Path(item) if isinstance(item, (str, Path)) else to_channels(arr, 3))
        names.append(_unique(name, taken, stems, own=isinstance(item, (str, Path))))
        sources.append(display_path(item) if isinstance(item, (str, Path)) else None)
    if not tensors:
        raise ImageError(errors[0] if errors else "no images given")
    return Batch(_stacked(tensors, names, preprocess), originals, names, errors, sources, kept)


def _stacked(tensors: list[torch.Tensor], names: list[str], preprocess: Any) -> torch.Tensor:
    """The preprocessed images as one batch; one line naming two images of different sizes
    (a preprocessing that keeps each image's own size: a Hugging Face processor that keeps
    the aspect ratio, a user's function) and what to do."""
    from .preprocess.engines import _function_name, _is_image_processor
    from .preprocess.from_model import Renormalised

    first = tuple(tensors[0].shape)
    for t, name in zip(tensors, names, strict=True):
        if tuple(t.shape) == first:
            continue
        fn = getattr(preprocess, "function", None)
        what = (
            f"the preprocessing ({_function_name(fn)})" if fn is not None else "the preprocessing"
        )
        if fn is None or _is_image_processor(fn.fn if isinstance(fn, Renormalised) else fn):
            fix = "give --input-size (input_size= in Python) to resize them all to one size"
        else:
            fix = "make the function return one size"
        raise DataError(
            f"images '{names[0]}' ({_dims(first)}) and '{name}' ({_dims(t.shape)}) come out of "
            f"{what} at different sizes, and one batch takes one size: run them one at a time "
            f"or in groups of one size, or {fix}"
        )
    return torch.stack(tensors)


def _dims(shape: Any) -> str:
    return "×".join(str(int(v)) for v in shape)


def _warn_if_unnormalised(t: torch.Tensor, preprocess: Preprocess) -> None:
    """A float tensor is the model's input as it is; one in [0, 1] for a model that normalises
    its input is most likely an image not yet preprocessed (``read_image(...) / 255``)."""
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is None or std is None or getattr(preprocess, "function", None) is not None:
        return
    if all(m == 0 for m in mean) and all(v == 1 for v in std):
        return
    if t.numel() and float(t.min()) >= 0 and float(t.max()) <= 1:
        warnings.warn(
            "the input tensor's values all lie in [0, 1], as an image's before normalisation, "
            "but a float tensor goes to the model as it is (this model normalises with mean "
            f"{', '.join(f'{m:g}' for m in mean)}): pass a uint8 tensor, an array or a PIL "
            "image to have it preprocessed, or normalise the tensor first",
            NetlensWarning,
            stacklevel=4,
        )


def _unique(name: str, taken: set[str], stems: Collection[str] = (), *, own: bool = False) -> str:
    """``name``, else ``name_2``, ``name_3``...: the first whose casefold is not in ``taken``
    (the casefolded names given so far) nor, unless it is this input's own stem (``own``), in
    ``stems`` (the casefolded stems of all input files): outputs stay apart on case-insensitive
    file systems (macOS, Windows), and ``a_2_*`` is never the map of another photo than
    ``a_2.jpg``. Adds the name to ``taken``."""
    key = name.casefold()
    if key in taken or (key in stems and not own):
        k = 2
        while f"{key}_{k}" in taken or f"{key}_{k}" in stems:
            k += 1
        name, key = f"{name}_{k}", f"{key}_{k}"
    taken.add(key)
    return name
