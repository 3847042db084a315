"""EXIF orientation: photos shown upright, as every viewer shows them.

Cameras and phones store the sensor's rows as they come and record how to turn them in the
EXIF ``Orientation`` tag. netlens decodes with ``cv2.IMREAD_UNCHANGED`` (to keep alpha and 16-bit
depth), which ignores that tag, so a portrait phone photo reached the model lying on its side,
and its heat map was drawn on a sideways picture. :func:`exif_orientation` reads the tag from
the bytes (JPEG ``APP1``, PNG ``eXIf`` or ImageMagick's "Raw profile type exif" text chunk,
WebP ``EXIF``; without an Exif ``Orientation``, XMP's ``tiff:Orientation``: where Pillow's
``getexif`` finds them; the Exif block itself is parsed by Pillow's ``Image.Exif``; AVIF's
container through Pillow's plugin) and :func:`orient` turns the
decoded pixels upright, as Pillow's ``ImageOps.exif_transpose`` does (and OpenCV's
``IMREAD_COLOR``, except for AVIF). TIFF needs neither: libtiff applies its own orientation tag
when decoding (and Pillow, which decodes TIFFs with alpha, when loading them).
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib

import numpy as np

__all__ = ["exif_orientation", "orient"]


def exif_orientation(data: bytes) -> int:
    """The EXIF ``Orientation`` (1..8) of an encoded JPEG, PNG or WebP image; 1 (as stored)
    when there is none, the format carries none, or the block is broken.

    Read where Pillow's ``getexif`` (and so ``ImageOps.exif_transpose``) reads it: the Exif
    block (a PNG's ``eXIf`` chunk, else its "Raw profile type exif" text chunk), and when that
    has no ``Orientation``, XMP's ``tiff:Orientation``. Only metadata is read, no pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": then there is no tag
            if data[4:12] in (b"ftypavif", b"ftypavis"):
                value = _avif_orientation(data)
            else:
                value = _tag_orientation(*_metadata(data))
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


def _tag_orientation(block: bytes | None, xmp: bytes | None) -> object:
    """The Exif block's ``Orientation``; without one, XMP's ``tiff:Orientation`` (as Pillow)."""
    value = None
    if block:
        from PIL import Image

        exif = Image.Exif()
        exif.load(block)
        value = exif.get(0x0112)
    if value is None and xmp:
        found = re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)
        value = int(found[2]) if found else None
    return 1 if value is None else value


def _metadata(data: bytes) -> tuple[bytes | None, bytes | None]:
    """The Exif block and the XMP packet of an encoded JPEG, PNG or WebP image (None: none)."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_metadata(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_metadata(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        exif = _chunk(data, 12, b"EXIF", big_endian=False, end=None)
        return exif, _chunk(data, 12, b"XMP ", big_endian=False, end=None)
    return None, None


_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_metadata(data: bytes) -> tuple[bytes | None, bytes | None]:
    """The first ``APP1`` segment holding ``Exif\\0\\0`` and the last holding XMP (Pillow keeps
    the last), from the markers before the scan."""
    exif = xmp = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and exif is None:
            exif = body
        elif marker == 0xE1 and body.startswith(_XMP_APP1):
            xmp = body[len(_XMP_APP1) :]
        pos += 2 + length
    return exif, xmp


_TEXT_LIMIT = 1 << 20  # Pillow's own limit on a decompressed text chunk (ImageFile.SAFEBLOCK)
_RAW_EXIF = b"Raw profile type exif"
_XMP_KEY = b"XML:com.adobe.xmp"


def _png_metadata(data: bytes) -> tuple[bytes | None, bytes | None]:
    """A PNG's ``eXIf`` chunk (else the hex Exif of ImageMagick's "Raw profile type exif" text
    chunk, as Pillow reads it) and its XMP text chunk, from the chunks before ``IEND``."""
    exif = raw_exif = xmp = None
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, start = data[pos + 4 : pos + 8], pos + 8  # no copy of the pixel chunks
        if kind == b"IEND":
            break
        if kind == b"eXIf" and exif is None:
            exif = data[start : start + length]
        elif kind in (b"tEXt", b"zTXt", b"iTXt") and data[start : start + 22].startswith(
            (_RAW_EXIF + b"\x00", _XMP_KEY + b"\x00")
        ):
            key, _, text = data[start : start + length].partition(b"\x00")
            text = _png_text(kind, text)  # the last of each wins, as in Pillow's info
            if text is not None and key == _RAW_EXIF:
                raw_exif = text
            elif text is not None:
                xmp = text
        pos += 12 + length
    if exif is None and raw_exif is not None:
        exif = bytes.fromhex("".join(raw_exif.decode("latin-1").split("\n")[3:]))
    return exif, xmp


def _png_text(kind: bytes, text: bytes) -> bytes | None:
    """A text chunk's text after its key (zTXt and compressed iTXt inflated, within 1 MB)."""
    compressed = kind == b"zTXt"
    if kind == b"iTXt":
        if len(text) < 2:
            return None
        compressed, method, text = text[0] != 0, text[1], text[2:]
        if compressed and method != 0:
            return None
        parts = text.split(b"\x00", 2)  # language, translated key, text
        if len(parts) < 3:
            return None
        text = parts[2]
    elif compressed:
        text = text[1:]  # the compression method byte
    if not compressed:
        return text
    inflate = zlib.decompressobj()
    out = inflate.decompress(text, _TEXT_LIMIT)
    return None if inflate.unconsumed_tail else out


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
