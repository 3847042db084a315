"""PNG bytes from arrays and figures' pictures: encode, embed as data URIs, stack."""

from __future__ import annotations

import base64
import struct

import numpy as np

from ..errors import NetlensError

__all__ = ["encode_png", "png_uri", "png_width", "stack_pngs"]


def png_uri(data: bytes | np.ndarray) -> str:
    """PNG bytes (or an H×W×3 uint8 RGB array, encoded) as a ``data:`` URI."""
    if isinstance(data, np.ndarray):
        data = encode_png(data)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def encode_png(rgb: np.ndarray) -> bytes:
    """An H×W×3 uint8 RGB array as PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise NetlensError("could not encode a PNG")
    return buf.tobytes()


def png_width(png: bytes) -> int:
    """The width in pixels written in a PNG's header."""
    return struct.unpack(">I", png[16:20])[0]


def stack_pngs(pngs: list[bytes], gap: int = 8) -> bytes:
    """PNGs stacked top to bottom on white, left-aligned, as one PNG."""
    import cv2

    images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in pngs]
    width = max(im.shape[1] for im in images)
    parts = []
    for im in images:
        pad = np.full((im.shape[0] + gap, width, 3), 255, np.uint8)
        pad[: im.shape[0], : im.shape[1]] = im
        parts.append(pad)
    ok, buf = cv2.imencode(".png", np.concatenate(parts)[:-gap])
    return buf.tobytes()
