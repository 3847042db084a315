"""Decode image files within a pixel budget: header first, then OpenCV, then plain uint8 RGB.

:func:`read_checked` is the body of :func:`netlens.images.read_image`: the header's width and
height (:mod:`netlens.image_header`) must be known and within :func:`pixel_limit` before a
byte is decoded; what libpng/libtiff/OpenCV print on stderr meanwhile is silenced; 16-bit
(colour PNG/TIFF as Pillow reads them: x >> 8; others x / 257), float and RGBA images become
8-bit RGB without full-size float copies; photos are turned
upright by their EXIF orientation (:mod:`netlens.image_orientation`). :func:`read_stored`
reads a file's stored values (masks) under the same limit and orientation.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from .errors import ImageError, NetlensWarning
from .image_orientation import exif_orientation, orient
from .naming import display_path, is_special_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "MAX_PIXELS_ENV",
    "pixel_limit",
    "read_checked",
    "read_stored",
    "upright_size",
]

FORMATS = "PNG, JPEG, WebP, TIFF, BMP, GIF, AVIF, JPEG 2000, PNM/PAM/PFM, Sun raster, HDR"
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "NETLENS_MAX_PIXELS"
_BYTES_PER_PIXEL_BOUND = 16  # float32 RGBA, uncompressed: no real file is larger per pixel
_METADATA_SLACK = 64 << 20


def pixel_limit(max_pixels: int | None = None) -> int:
    """The most pixels (width × height) netlens decodes for one image.

    ``max_pixels`` when given, else the ``NETLENS_MAX_PIXELS`` environment variable (a number,
    ``2.5e8`` and ``250M`` work), else :data:`DEFAULT_MAX_PIXELS` (100 MP: any camera photo).

    Example:
        >>> pixel_limit(4096 * 4096)
        16777216
    """
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        max_pixels = parse_pixels(raw)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise ImageError(f"max_pixels must be a whole number of pixels, got {max_pixels!r}")
    if max_pixels < 1:
        raise ImageError(f"max_pixels must be at least 1, got {max_pixels}")
    return int(max_pixels)


def parse_pixels(raw: str, what: str = MAX_PIXELS_ENV) -> int:
    """A pixel count written as ``100000000``, ``2.5e8`` or ``250M``; one line if not."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(raw[-1:].upper(), 1)
    number = raw[:-1] if scale > 1 else raw
    try:
        value = float(number) * scale
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 1 or value > 2**62:
        raise ImageError(
            f"{what}={raw[:40]!r} is not a pixel count; use a number like 100000000, 2.5e8 or 250M"
        )
    return int(value)


def read_checked(p: Path, max_pixels: int | None = None) -> np.ndarray:
    """Read ``p`` as :func:`netlens.images.read_image` documents (one-line ImageErrors)."""
    name = display_path(p)
    limit = pixel_limit(max_pixels)
    data, size = _read_file(p, name, limit)
    return _decode(data, name, size, limit)


def read_stored(p: Path, max_pixels: int | None = None) -> np.ndarray:
    """The values stored in image file ``p`` as OpenCV's ``IMREAD_UNCHANGED`` decodes them (any
    depth; BGR, BGRA or gray), turned upright by the EXIF orientation as :func:`read_checked`
    turns photos, under the same pixel limit and with the same one-line ImageErrors: for masks,
    whose values (a label 1 in 16 bits, an alpha channel) are the data."""
    name = display_path(p)
    limit = pixel_limit(max_pixels)
    data, size = _read_file(p, name, limit)
    img = _decoded(data, name, size, limit, by_pillow=False)
    return orient(img, exif_orientation(data))


def _read_file(p: Path, name: str, limit: int) -> tuple[bytes, tuple[int, int]]:
    """The bytes of image file ``p`` and its header's size, checked against ``limit`` before
    the pixel data is read."""
    if is_special_file(p):  # opening a pipe waits for a writer; a device never ends
        raise ImageError(f"{name} is a pipe or a device, not an image file; pass an image file")
    try:
        with p.open("rb") as fh:
            size = _checked_size(fh, name, limit, os.fstat(fh.fileno()).st_size)
            data = fh.read()
    except FileNotFoundError:
        if p.is_symlink():  # a dangling link: a moved or half-copied dataset
            target = display_path(p.readlink())
            raise ImageError(f"{name} is a link to {target}, which does not exist") from None
        raise ImageError(f"image not found: {name} (check the path)") from None
    except IsADirectoryError:
        raise ImageError(
            f"{name} is a folder; pass image files, or the folder where a folder is OK"
        ) from None
    except OSError as exc:
        raise ImageError(f"cannot read {name}: {exc.strerror or exc} (check the file)") from None
    return data, size


def _checked_size(fh: BinaryIO, name: str, limit: int, nbytes: int) -> tuple[int, int]:
    """The header's (width, height), once it is known, non-zero and within ``limit``."""
    if nbytes == 0:
        raise ImageError(f"image file is empty: {name}")
    from .image_header import image_size

    size = image_size(fh)
    if size is None or min(size) < 1:
        raise ImageError(
            f"cannot decode {name}: not an image, damaged, or a format netlens does not read "
            f"({FORMATS})"
        )
    w, h = size
    if w * h > limit:
        raise ImageError(
            f"{name} is {w}×{h} pixels ({w * h / 1e6:.3g} MP), over the limit of "
            f"{limit / 1e6:.3g} MP ({limit:,} pixels) per image; if you trust the file, raise "
            "the limit with "
            f"--max-pixels or {MAX_PIXELS_ENV}"
        )
    if nbytes > _BYTES_PER_PIXEL_BOUND * w * h + _METADATA_SLACK:
        raise ImageError(
            f"{name} is {nbytes / 1e6:.0f} MB for a {w}×{h} image; the file carries far more "
            "than pixels (padded or damaged): re-save it"
        )
    return size


def _decode(data: bytes, name: str, size: tuple[int, int], limit: int) -> np.ndarray:
    """Decode bytes whose header said ``size``; never more than ``limit`` pixels."""
    by_pillow = _pillow_reads(data)
    img = _decoded(data, name, size, limit, by_pillow=by_pillow)
    high_byte = _high_byte(img, data)
    if img.dtype == np.uint16:
        warn_if_dark(img, name, high_byte=high_byte)
    if not by_pillow:
        img = _normalise_decoded(
            img, name, radiance=data.startswith(_RADIANCE), high_byte=high_byte
        )
    return orient(img, exif_orientation(data))  # upright, as viewers show


def _decoded(
    data: bytes, name: str, size: tuple[int, int], limit: int, *, by_pillow: bool
) -> np.ndarray:
    """The pixels of ``data`` as the decoder gives them (OpenCV's, or Pillow's as
    :func:`_pillow_decode` reads them), after checking that the header still says ``size``."""
    from .diagnostics import native_stderr_silenced
    from .image_header import image_size

    if image_size(io.BytesIO(data)) != size:
        raise ImageError(f"{name} changed while it was being read; try again")
    try:
        with native_stderr_silenced():  # libpng/libtiff/OpenCV print to fd 2 directly
            if by_pillow:
                img = _pillow_decode(data)
            else:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception:  # noqa: BLE001 - any decoder failure is a damaged file, never a crash
        img = None
    if img is None or img.size == 0:
        raise ImageError(
            f"cannot decode {name}: its image data is damaged or cut short; re-save it"
        )
    if img.shape[0] * img.shape[1] > limit:  # the decoder disagreed with the header
        raise ImageError(f"{name} decodes to more than {limit / 1e6:g} MP; re-save it")
    return img


_RADIANCE = (b"#?", b"PF", b"Pf")  # Radiance HDR, PFM: light values, no white point
_HIGH_BYTE = (b"\x89PNG", b"II*\x00", b"MM\x00*")  # PNG, TIFF


def _high_byte(img: np.ndarray, data: bytes) -> bool:
    """Whether a 16-bit file is read as its values' high bytes (x >> 8): colour (with alpha or
    not) PNGs and TIFFs, as Pillow decodes them to 8 bits for ``convert("RGB")`` in timm's and
    torchvision's loaders. 16-bit gray (which Pillow keeps in 16 bits and saturates on
    conversion) and other formats (PPM: Pillow too rounds x / 257) are read as x / 257."""
    colour = img.ndim == 3 and img.shape[2] >= 3
    return img.dtype == np.uint16 and colour and data.startswith(_HIGH_BYTE)


def _pillow_reads(data: bytes) -> bool:
    """The files Pillow decodes, as the models' loaders (Pillow's ``convert("RGB")``) decode
    them, where OpenCV gives other pixels:

    - GIFs: OpenCV puts the background colour under transparent pixels (Pillow keeps the
      transparent index's own colour);
    - animated PNGs: OpenCV reads the first animation frame, Pillow the default image (they
      differ when the default image is not part of the animation);
    - 8-bit TIFFs with an alpha channel: libtiff's RGBA reader multiplies the colours by alpha
      (transparent pixels black, half-transparent ones halved);
    - CMYK (and YCCK) JPEGs: OpenCV's CMYK conversion is not Pillow's."""
    if data.startswith(b"GIF8"):
        return True
    if data.startswith(b"\x89PNG"):
        return b"acTL" in data[: data.find(b"IDAT")]
    if data.startswith(b"\xff\xd8"):
        return _jpeg_components(data) == 4
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_with_alpha(data)
    return False


def _jpeg_components(data: bytes) -> int | None:
    """The number of colour components in a JPEG's first frame header (4: CMYK or YCCK)."""
    from .image_header import _JPEG_SOF

    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # no frame header before the scan
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            return data[pos + 9] if pos + 9 < len(data) else None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _tiff_with_alpha(data: bytes) -> bool:
    """Whether a TIFF's first image is 8-bit colour with an alpha channel (from its header)."""
    from PIL import TiffImagePlugin

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = TiffImagePlugin.TiffImageFile(io.BytesIO(data))
            bits = im.tag_v2.get(258, (1,))
    except Exception:  # noqa: BLE001 - a header Pillow cannot read stays with OpenCV
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return im.mode in ("RGBA", "RGBa") and all(b == 8 for b in bits)


def _pillow_decode(data: bytes) -> np.ndarray:
    """A GIF's first frame, an APNG's default image, a TIFF's first image (upright by its
    orientation tag, as libtiff turns what OpenCV reads) or a CMYK JPEG as uint8 RGB or gray:
    Pillow's pixels read as a PIL image given in memory is (:func:`netlens.images.as_pixels`,
    before any EXIF orientation, which :func:`_decode` applies). The plugins are constructed
    directly: the pixel limit was checked, not Pillow's own."""
    from PIL import GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    from .images import _pil_pixels

    if data.startswith(b"GIF8"):
        kind: Any = GifImagePlugin.GifImageFile
    elif data.startswith(b"\x89PNG"):
        kind = PngImagePlugin.PngImageFile
    elif data.startswith(b"\xff\xd8"):
        kind = JpegImagePlugin.JpegImageFile
    else:
        kind = TiffImagePlugin.TiffImageFile
    with kind(io.BytesIO(data)) as im:
        pixels = _pil_pixels(im)
        if kind is TiffImagePlugin.TiffImageFile:  # as libtiff turns what OpenCV reads
            # Pillow >= 13 turns a TIFF as it loads it and then drops the tag; older ones not
            pixels = orient(pixels, _tiff_tag_orientation(im))
    return pixels


def _tiff_tag_orientation(im: Any) -> int:
    """The orientation tag a loaded Pillow TIFF still carries (1: none, or already applied)."""
    value = im.tag_v2.get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(p: Path) -> tuple[int, int] | None:
    """``(height, width)`` of image ``p`` as :func:`read_checked` returns it (after its EXIF
    orientation), from its header; None when the header does not say."""
    from .image_header import image_size

    try:
        with p.open("rb") as fh:
            size = image_size(fh)
            data = fh.read()
    except OSError:
        return None
    if size is None:
        return None
    w, h = size
    return (w, h) if exif_orientation(data) >= 5 else (h, w)  # 5–8 turn it a quarter


def warn_if_dark(img: np.ndarray, name: str, *, high_byte: bool = False) -> None:
    """A 16-bit image whose values stay below 4096 holds a 12-bit (or 10-bit) camera's data:
    read with 65535 as white, as OpenCV, scikit-image and netlens read 16 bits, it is almost
    black. It is read so all the same (stretching would be a guess at what the model saw), with
    one warning line (``high_byte``: the file is read as x >> 8, see :func:`_high_byte`)."""
    top = int(img.max()) if img.size else 0
    if not 0 < top < 4096:
        return
    _DARK[0] += 1
    if _DARK[0] > 3:  # a folder of them: one more line for all the others, not one per file
        text = "more 16-bit images with values below 4096 read almost black"
        warnings.warn(text, NetlensWarning, stacklevel=2)
        return
    warnings.warn(
        f"{name}: a 16-bit image whose values stay below {top + 1} (data of "
        f"{top.bit_length()} bits or fewer) reads almost black: its brightest pixel becomes "
        f"{top >> 8 if high_byte else round(top / 257)} of 255 (65535 is white); if the "
        "model saw such images "
        "stretched, stretch them before (x * 16 for 12-bit data)",
        NetlensWarning,
        stacklevel=2,
    )


_DARK = [0]  # how many dark 16-bit images this process has read


def _normalise_decoded(
    img: np.ndarray, name: str, *, radiance: bool = False, high_byte: bool = False
) -> np.ndarray:
    """Decoded OpenCV array (BGR/BGRA/gray, any depth) → uint8 RGB or gray, no float copies.

    16-bit pixels become x >> 8 where ``high_byte`` (colour PNG and TIFF: what Pillow gives),
    else round(x / 257). Float and 32-bit integer pixels are read as the same array given in
    memory is (:func:`netlens.images.as_pixels`: [0, 1] scaled to 0..255, 0..255 kept, others
    refused); a Radiance HDR or PFM file's light values are stretched to 0..255."""
    if img.dtype == np.uint16 and high_byte:
        img = np.right_shift(img, 8, out=img).astype(np.uint8)  # the decoder's own array
    elif img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=1 / 257)  # rounds like x / 257 + 0.5
    elif img.dtype != np.uint8 and radiance:
        img = _float_to_uint8(img)
    elif img.dtype != np.uint8:
        from .images import _as_uint8

        img = _as_uint8(img, name)
    if img.ndim == 2:
        return img[:, :, None]
    if img.shape[2] == 1:
        return img
    img = np.ascontiguousarray(img[:, :, :3])  # alpha dropped, as PIL's convert("RGB") does
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


def _float_to_uint8(img: np.ndarray) -> np.ndarray:
    """Stretch a float image's range (light values: HDR, PFM) to 0..255."""
    f = img.astype(np.float32, copy=False)
    finite = np.isfinite(f)
    if not finite.all():
        f = np.where(finite, f, 0).astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    return ((f - lo) * (255.0 / (hi - lo + 1e-12)) + 0.5).astype(np.uint8)
