"""EXIF orientation: photos shown upright, as every viewer shows them.

Cameras and phones store the sensor's rows as they come and record how to turn them in the
EXIF ``Orientation`` tag. netlens decodes with ``cv2.IMREAD_UNCHANGED`` (to keep alpha and 16-bit
depth), which ignores that tag, so a portrait phone photo reached the model lying on its side,
and its heat map was drawn on a sideways picture. :func:`exif_orientation` reads the tag from
the bytes (JPEG ``APP1``, PNG ``eXIf``, WebP ``EXIF``; the Exif block itself is parsed by
Pillow's ``Image.Exif``; AVIF's container through Pillow's plugin) and :func:`orient` turns the
decoded pixels upright, as Pillow's ``ImageOps.exif_transpose`` does (and OpenCV's
``IMREAD_COLOR``, except for AVIF). TIFF needs neither: libtiff applies its own orientation tag
when decoding.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np

__all__ = ["exif_orientation", "orient"]


def exif_orientation(data: bytes) -> int:
    """The EXIF ``Orientation`` (1..8) of an encoded JPEG, PNG or WebP image; 1 (as stored)
    when there is none, the format carries none, or the block is broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": then there is no tag
            if data[4:12] in (b"ftypavif", b"ftypavis"):
                value = _avif_orientation(data)
            else:
                block = _exif_block(data)
                if not block:
                    return 1
                from PIL import Image

                exif = Image.Exif()
                exif.load(block)
                value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken block is "no orientation", never a crash
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` (H×W or H×W×C) turned as EXIF ``orientation`` says, as a contiguous array.

    Example:
        >>> orient(np.arange(6).reshape(2, 3), 6).tolist()  # 90° clockwise
        [[3, 0], [4, 1], [5, 2]]
    """
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return img if turned is None else np.ascontiguousarray(turned(img))


def _avif_orientation(data: bytes) -> int:
    """AVIF: the orientation Pillow reads from the container (its Exif item, or the ``irot``
    and ``imir`` boxes), with the plugin constructed directly: no pixels decoded, and no bomb
    check of Pillow's own (netlens' limit applies)."""
    import io

    from PIL import AvifImagePlugin

    return AvifImagePlugin.AvifImageFile(io.BytesIO(data)).getexif().get(0x0112, 1)


def _exif_block(data: bytes) -> bytes | None:
    if data.startswith(b"\xff\xd8"):
        return _jpeg_exif(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _chunk(data, 8, b"eXIf", big_endian=True, end=b"IEND")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _chunk(data, 12, b"EXIF", big_endian=False, end=None)
    return None


def _jpeg_exif(data: bytes) -> bytes | None:
    """The first ``APP1`` segment holding ``Exif\\0\\0``, from the markers before the scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            return body
        pos += 2 + length
    return None


def _chunk(
    data: bytes, pos: int, name: bytes, *, big_endian: bool, end: bytes | None
) -> bytes | None:
    """The payload of the first chunk called ``name`` (PNG: length, type, data, CRC; RIFF:
    type, little-endian length, data padded to an even length)."""
    while pos + 8 <= len(data):
        if big_endian:
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind, start, step = data[pos + 4 : pos + 8], pos + 8, 12 + length
        else:
            (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
            kind, start, step = data[pos : pos + 4], pos + 8, 8 + length + (length & 1)
        if kind == name:
            return data[start : start + length]
        if kind == end:
            return None
        pos += step
    return None
