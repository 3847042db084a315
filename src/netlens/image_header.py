"""An image's width and height, read from its header before anything is decoded.

Decoders allocate the whole pixel buffer from the header's numbers, so a 400 KB PNG that says
20000×20000 costs 1.2 GB (and more in conversions) before a single row is read. netlens asks
the header first and refuses images over the pixel limit (see :func:`netlens.images.read_image`).

How the header is read, per format (only formats OpenCV also decodes are recognised):

- PNG, JPEG, GIF, BMP, WebP, PNM/PAM/PFM, Sun raster, Radiance HDR: small parsers here that
  read exactly the fields the decoders size their buffers from, and nothing else, so they are
  as tolerant as the decoders (Pillow rejects, e.g., a PNG whose text chunk has a bad CRC,
  which libpng reads; Pillow's WebP ``open`` already allocates the canvas).
- TIFF, JPEG 2000, AVIF (container formats): Pillow's lazy ``open``, which parses the header
  and stops; its plugins are constructed directly, so Pillow's process-wide bomb threshold
  does not interfere with netlens' own limit.

Anything else gives None: netlens then refuses the file instead of decoding it blind.
"""

from __future__ import annotations

import re
import struct
import warnings
from typing import BinaryIO

__all__ = ["image_size"]

Size = tuple[int, int]
_HEAD_BYTES = 1 << 16  # all the fixed-position and text headers fit in this
_JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
_PIL_FORMATS = ("TIFF", "JPEG2000", "AVIF")


def image_size(fp: BinaryIO) -> Size | None:
    """``(width, height)`` of the first image in the seekable binary file ``fp``.

    Only the header is read. None when the format is not one OpenCV decodes or the header is
    broken. ``fp`` is left at position 0.

    Example:
        >>> import io, cv2, numpy as np
        >>> png = cv2.imencode(".png", np.zeros((3, 5), np.uint8))[1].tobytes()
        >>> image_size(io.BytesIO(png))
        (5, 3)
    """
    fp.seek(0)
    head = fp.read(_HEAD_BYTES)
    fp.seek(0)
    try:
        for magic, parse in _PARSERS:
            if head.startswith(magic):
                return parse(head) if parse is not _jpeg_size else _jpeg_size(fp)
        if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
            return _webp_size(head)
        return _pil_size(fp, head[:32])
    except (ValueError, IndexError, struct.error, OSError):
        return None
    finally:
        fp.seek(0)


def _png_size(head: bytes) -> Size | None:
    """PNG: IHDR, which must be the first chunk (libpng refuses anything else)."""
    if head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _jpeg_size(fp: BinaryIO) -> Size | None:
    """JPEG: the first SOFn marker's frame size (the one libjpeg allocates for)."""
    fp.seek(2)
    skipped = 0
    while skipped < _HEAD_BYTES:
        byte = fp.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            skipped += 1  # libjpeg skips stray bytes between markers too
            continue
        marker = fp.read(1)
        while marker == b"\xff":
            marker = fp.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):
            return None  # end of file, end of image or scan data before any frame header
        m = marker[0]
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            continue  # markers without a length
        (length,) = struct.unpack(">H", fp.read(2))
        if m in _JPEG_SOF:
            h, w = struct.unpack(">xHH", fp.read(5))
            return w, h
        fp.seek(length - 2, 1)
    return None


def _gif_size(head: bytes) -> Size | None:
    """GIF: the logical screen, grown to the first frame's extent when that is larger.

    OpenCV allocates the screen (and refuses frames outside it); Pillow grows the screen to
    the first frame. The larger of both is checked; past the bytes read, the screen is used.
    """
    sw, sh, flags = struct.unpack("<HHB", head[6:11])
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    try:
        while head[pos] == 0x21:  # extension blocks: label, then sub-blocks to a zero length
            pos += 2
            while head[pos]:
                pos += head[pos] + 1
            pos += 1
        if head[pos] != 0x2C:
            return sw, sh
        left, top, w, h = struct.unpack("<HHHH", head[pos + 1 : pos + 9])
    except (IndexError, struct.error):
        return sw, sh
    return max(sw, left + w), max(sh, top + h)


def _bmp_size(head: bytes) -> Size | None:
    """BMP/DIB: the OS/2 core header (16-bit sizes) or any later one (signed 32-bit)."""
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:
        return struct.unpack("<HH", head[18:22])
    w, h = struct.unpack("<ii", head[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _sun_size(head: bytes) -> Size | None:
    """Sun raster: width and height right after the magic number."""
    return struct.unpack(">II", head[4:12])


def _webp_size(head: bytes) -> Size | None:
    """WebP: the VP8 frame, VP8L bitstream or VP8X canvas size (RIFF chunk at offset 12)."""
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _pnm_size(head: bytes) -> Size | None:
    """PBM/PGM/PPM (``P1``-``P6``) and PFM (``PF``/``Pf``): width and height tokens."""
    tokens = re.sub(rb"#[^\n]*", b" ", head[2:1024]).split()
    return (int(tokens[0]), int(tokens[1])) if len(tokens) >= 2 else None


def _pam_size(head: bytes) -> Size | None:
    """PAM (``P7``): the WIDTH and HEIGHT header lines."""
    w = re.search(rb"^WIDTH\s+(\d+)", head, re.MULTILINE)
    h = re.search(rb"^HEIGHT\s+(\d+)", head, re.MULTILINE)
    return (int(w.group(1)), int(h.group(1))) if w and h else None


def _hdr_size(head: bytes) -> Size | None:
    """Radiance HDR: the resolution line after the blank line that ends the header."""
    res = re.search(rb"\n\n[-+]([XY]) (\d+) [-+][XY] (\d+)", head)
    if res is None:
        return None
    first, second = int(res.group(2)), int(res.group(3))
    return (second, first) if res.group(1) == b"Y" else (first, second)


def _pil_size(fp: BinaryIO, head: bytes) -> Size | None:
    """Size through Pillow's format plugins, constructed directly (no bomb check of its own)."""
    from PIL import Image

    _register_pil_plugins()
    for fmt in _PIL_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        verdict = accept(head) if accept is not None else True
        if factory is None or not verdict or isinstance(verdict, str):
            continue
        fp.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like
                im = factory(fp, "")
        except Exception:  # noqa: BLE001 - a broken header is "unknown", never a crash
            return None
        return (int(im.size[0]), int(im.size[1])) if len(im.size) == 2 else None
    return None


def _register_pil_plugins() -> None:
    """Import the Pillow plugins for the container formats (importing registers them)."""
    from PIL import Jpeg2KImagePlugin, TiffImagePlugin  # noqa: F401

    try:
        from PIL import AvifImagePlugin  # noqa: F401  (Pillow >= 11.2)
    except ImportError:
        pass


_PARSERS = (
    (b"\x89PNG\r\n\x1a\n", _png_size),
    (b"\xff\xd8", _jpeg_size),
    (b"GIF87a", _gif_size),
    (b"GIF89a", _gif_size),
    (b"BM", _bmp_size),
    (b"\x59\xa6\x6a\x95", _sun_size),
    (b"P7", _pam_size),
    *((b"P" + k, _pnm_size) for k in (b"1", b"2", b"3", b"4", b"5", b"6", b"F", b"f")),
    (b"#?RADIANCE", _hdr_size),
    (b"#?RGBE", _hdr_size),
)
