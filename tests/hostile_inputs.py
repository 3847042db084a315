"""Generators of hostile inputs for the tests (and, later, the fuzz suite): image bombs, broken
files, odd file names, hostile checkpoints and pickles, and a child-process peak-RSS probe.

Everything is seeded and fast: a 20000×20000 PNG bomb with a valid zlib stream takes ~20 ms
(one compressed block of zeros, repeated after a full flush). The fuzz suite (tests/test_fuzz_*.py)
judges every run with :func:`assert_cli_outcome` and :func:`assert_consistent_folder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SEED = int(os.environ.get("NETLENS_FUZZ_SEED", "14"))  # the fuzz suite's seed
EVERYTHING = os.environ.get("NETLENS_FUZZ") == "all"  # run every case, not a seeded sample
BOMB_SIDE = 20000  # 400 MP: 1.2 GB as 8-bit RGB, the size from issue 14


# -- images ----------------------------------------------------------------------------------
def small_image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """A seeded BGR uint8 test image with structure (so every codec has something to code)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = (30, 200, 90)
    return img


def encode(ext: str, img: np.ndarray | None = None) -> bytes:
    """``img`` (default :func:`small_image`) encoded by OpenCV as ``ext``."""
    img = small_image() if img is None else img
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    ok, buf = cv2.imencode(ext, img)
    assert ok, ext
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeros_zlib(n: int) -> bytes:
    """A valid zlib stream that inflates to ``n`` zero bytes, built in milliseconds."""
    block = 1 << 20
    co = zlib.compressobj(9)
    first = co.compress(bytes(block)) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(bytes(block)) + co.flush(zlib.Z_FULL_FLUSH)  # same bytes every time
    whole, rest = divmod(n, block)
    tail = co.compress(bytes(rest)) + co.flush(zlib.Z_FINISH)
    adler = struct.pack(">I", ((n % 65521) << 16) | 1)  # adler32 of n zeros
    return first + again * (whole - 1) + tail[:-4] + adler


def png_bomb(w: int = BOMB_SIDE, h: int = BOMB_SIDE) -> bytes:
    """A valid RGB PNG of ``w``×``h`` black pixels (~1 MB for 20000²)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zeros_zlib(h * (3 * w + 1))
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _jpeg_sof_offset(data: bytes) -> int:
    pos = 2
    while True:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return pos + 5
        pos += 2 + length


def _tiff_patch(data: bytes, w: int, h: int) -> bytes:
    out = bytearray(data)
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):
            value = w if tag == 256 else h
            fmt = "<H" if kind == 3 else "<I"
            out[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def _box_patch(data: bytes, box: bytes, skip: int, first: int, second: int) -> bytes:
    pos = data.index(box) + 4 + skip
    return data[:pos] + struct.pack(">II", first, second) + data[pos + 8 :]


def _pixels_patch(ext: str, data: bytes, w: int, h: int) -> bytes:
    """Rewrite the size fields of an OpenCV-encoded ``ext`` file to claim ``w``×``h``."""
    if ext == ".png":
        ihdr = struct.pack(">II", w, h) + data[24:29]
        return data[:8] + _chunk(b"IHDR", ihdr) + data[33:]
    if ext == ".jpg":
        pos = _jpeg_sof_offset(data)
        return data[:pos] + struct.pack(">HH", h, w) + data[pos + 4 :]
    if ext == ".bmp":
        return data[:18] + struct.pack("<ii", w, h) + data[26:]
    if ext == ".gif":
        return data[:6] + struct.pack("<HH", w, h) + data[10:]
    if ext == ".webp":  # lossless VP8L: 14-bit sizes, so at most 16384² (268 MP)
        assert data[12:16] == b"VP8L"
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        bits |= (min(w, 16384) - 1) | ((min(h, 16384) - 1) << 14)
        return data[:21] + bits.to_bytes(4, "little") + data[25:]
    if ext == ".tif":
        return _tiff_patch(data, w, h)
    if ext in (".ppm", ".pfm"):
        lines = data.split(b"\n", 2)
        return lines[0] + b"\n" + f"{w} {h}".encode() + b"\n" + lines[2]
    if ext == ".pam":
        head, body = data.split(b"ENDHDR\n", 1)
        head = head.replace(b"WIDTH 56", f"WIDTH {w}".encode())
        return head.replace(b"HEIGHT 40", f"HEIGHT {h}".encode()) + b"ENDHDR\n" + body
    if ext == ".hdr":
        return data.replace(b"-Y 40 +X 56", f"-Y {h} +X {w}".encode(), 1)
    if ext == ".sr":
        return data[:4] + struct.pack(">II", w, h) + data[12:]
    if ext == ".jp2":
        return _box_patch(data, b"ihdr", 0, h, w)
    if ext == ".avif":
        return _box_patch(data, b"ispe", 4, w, h)
    raise ValueError(ext)


BOMB_FORMATS = (".png", ".jpg", ".bmp", ".gif", ".webp", ".tif", ".ppm", ".pam", ".pfm", ".hdr")
BOMB_FORMATS += (".sr", ".jp2", ".avif")


def header_bomb(ext: str, w: int = BOMB_SIDE, h: int = BOMB_SIDE) -> bytes:
    """A small real ``ext`` image whose header claims ``w``×``h`` pixels.

    AVIF claims 12000² instead: libavif itself refuses sides over 16384 before netlens could.
    """
    if ext == ".avif":
        w, h = min(w, 12000), min(h, 12000)
    return _pixels_patch(ext, encode(ext), w, h)


def jpeg_bomb(w: int = BOMB_SIDE, h: int = BOMB_SIDE) -> bytes:
    """A 16×16 baseline JPEG re-headered to ``w``×``h``: libjpeg decodes it all (as grey)."""
    return header_bomb(".jpg", w, h)


BROKEN_IMAGES: dict[str, Callable[[], bytes]] = {
    "zero-bytes.png": lambda: b"",
    "text.png": lambda: b"just some text, not an image\n" * 3,
    "truncated.png": lambda: encode(".png")[:200],
    "truncated.jpg": lambda: encode(".jpg")[:300],
    "truncated.tif": lambda: encode(".tif")[:200],
    "truncated.gif": lambda: encode(".gif")[:100],
    "truncated.webp": lambda: encode(".webp")[:60],
    "header-only.png": lambda: encode(".png")[:33],
    "zero-width.png": lambda: _pixels_patch(".png", encode(".png"), 0, 40),
    "model-file.png": lambda: b"PK\x03\x04" + bytes(200),
    "bad-crc-text.png": lambda: _with_bad_text_chunk(encode(".png")),
}


def _with_bad_text_chunk(png: bytes) -> bytes:
    """A PNG with a tEXt chunk whose CRC is wrong: libpng warns on stderr and reads it."""
    bad = struct.pack(">I", 5) + b"tEXtab\x00cd" + b"\x00\x00\x00\x00"
    return png[:33] + bad + png[33:]


ODD_NAMES: tuple[bytes, ...] = (
    b"\xff\xfe.png",  # not UTF-8: Python sees lone surrogates
    b"with space.png",
    "caf\u00e9 \u732b.png".encode(),
    b"-leading-dash.png",
    b"new\nline.png",
    b"x" * 240 + b".png",
    b"CON.png",
    b".hidden.png",
)


def write_bytes_name(folder: Path, raw_name: bytes, data: bytes) -> Path:
    """Write ``data`` to a file whose name is the raw bytes ``raw_name``; its str path."""
    path = os.path.join(os.fsencode(folder), raw_name)
    with open(path, "wb") as fh:
        fh.write(data)
    return Path(os.fsdecode(path))


# -- child processes -------------------------------------------------------------------------
_PROBE = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
    "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stdout.write(json.dumps({'rc': p.returncode, 'peak_kb': kb,"
    " 'out': p.stdout.decode('utf-8', 'replace'), 'err': p.stderr.decode('utf-8', 'replace')}))\n"
)


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``argv`` as the only child of a small probe process; its exit status, stdout,
    stderr and peak RSS (``peak_kb``, from ``RUSAGE_CHILDREN`` after it ended)."""
    full_env = {**os.environ, "NETLENS_DEBUG": "", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, env=full_env, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def netlens_cli() -> list[str]:
    """The argv prefix that runs this checkout's ``netlens`` CLI."""
    return [sys.executable, "-c", "from netlens.cli.app import main; main()"]


# -- checkpoints -----------------------------------------------------------------------------
BASE_KWARGS = {"widths": [4, 8, 8], "depth": 1}


def base_checkpoint(arch: str = "vgg", **arch_kwargs: object) -> dict:
    """A valid, seeded netlens checkpoint dict of a small netlens arch (VGG: 20k weights)."""
    import torch

    from netlens.models.checkpoint import make_checkpoint
    from netlens.models.factory import create_arch
    from netlens.plugins.manager import PluginHost

    torch.manual_seed(0)
    arch_kwargs = arch_kwargs or (BASE_KWARGS if arch == "vgg" else {})
    kwargs = {"num_classes": 3, **arch_kwargs}
    model = create_arch(arch, kwargs.pop("num_classes"), PluginHost(), **kwargs)
    return make_checkpoint(
        model,
        arch=arch,
        arch_kwargs={"num_classes": 3, **arch_kwargs},
        classes=["a", "b", "c"],
        preprocess={"size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5]},
        record={"epochs": 1},
    )


def _set(path: str, value: object) -> Callable[[dict], dict]:
    """A mutation that sets ``ckpt[a][b]...`` (dotted path) to ``value``."""

    def mutate(ckpt: dict) -> dict:
        keys = path.split(".")
        node = ckpt
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return ckpt

    return mutate


def _tensor(key: str, value: object) -> Callable[[dict], dict]:
    """A mutation that sets ``ckpt["state_dict"][key]`` (keys have dots of their own)."""

    def mutate(ckpt: dict) -> dict:
        ckpt["state_dict"][key] = value
        return ckpt

    return mutate


def _drop(key: str) -> Callable[[dict], dict]:
    def mutate(ckpt: dict) -> dict:
        del ckpt[key]
        return ckpt

    return mutate


def _nested(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node, node]  # shared: 2**depth leaves in a tiny pickle
    return node


HOSTILE_CHECKPOINTS: dict[str, tuple[Callable[[dict], dict], str]] = {
    # name: (mutation of base_checkpoint(), a fragment of the expected one-line message)
    "huge-width": (_set("arch_kwargs.widths", [100_000] * 3), "do not fit"),  # 0.7 TB of weights
    "huge-classes": (
        lambda c: _set("classes", None)(_set("arch_kwargs.num_classes", 1 << 20)(c)),
        "do not fit",
    ),
    "huge-img-size": (_set("arch_kwargs.img_size", 8192), "do not fit"),
    "width-2^24": (_set("arch_kwargs.in_chans", 1 << 24), "from 1 to 1024"),
    "int-overflow": (_set("arch_kwargs.img_size", 10**30), "out of range"),
    "checkpoint-path": (_set("arch_kwargs.checkpoint_path", "/etc/passwd"), "loads files"),
    "pretrained": (_set("arch_kwargs.pretrained", True), "loads files"),
    "cfg-overlay": (_set("arch_kwargs.pretrained_cfg_overlay", {"file": "x.pt"}), "loads files"),
    "weights": (_set("arch_kwargs.weights", "DEFAULT"), "loads files"),
    "device-kwarg": (_set("arch_kwargs.device", "cuda:7"), "loads files"),
    "unknown-kwarg": (_set("arch_kwargs.frobnicate", 1), "not an architecture option"),
    "path-value": (_set("arch_kwargs.act_layer", "../../evil.py"), "not an option value"),
    "file-value": (_set("arch_kwargs.norm_layer", "weights.pt"), "not an option value"),
    "nan-rate": (_set("arch_kwargs.drop_rate", float("nan")), "finite"),
    "rate>1": (_set("arch_kwargs.drop_rate", 3.0), "[0, 1]"),
    "bool-classes": (_set("arch_kwargs.num_classes", True), "whole numbers"),
    "negative-classes": (_set("arch_kwargs.num_classes", -3), "whole numbers"),
    "str-classes": (_set("arch_kwargs.num_classes", "10"), "whole numbers"),
    "deep-kwarg": (_set("arch_kwargs.depth", 10**6), "more layers"),
    "kwargs-list": (_set("arch_kwargs", [1, 2]), "must be a dict"),
    "kwargs-str": (_set("arch_kwargs", "num_classes=3"), "must be a dict"),
    "kwargs-int-key": (_set("arch_kwargs", {1: 2}), "not a name"),
    "kwargs-nested": (_set("arch_kwargs.widths", _nested(30)), "is a list"),
    "kwargs-dag": (_set("arch_kwargs", _nested(60)), "must be a dict"),  # 2**60 leaves
    "version-dag": (_set("version", _nested(60)), "'version' must be"),
    "arch-dag": (_set("arch", _nested(60)), "'arch' must be"),
    "classes-dag": (_set("classes", _nested(60)), "class 0 must be"),
    "arch-int": (_set("arch", 123), "'arch' must be"),
    "arch-none": (_set("arch", None), "'arch' must be"),
    "arch-empty": (_set("arch", ""), "not an architecture name"),
    "arch-hub": (_set("arch", "hf-hub:timm/resnet18.a1_in1k"), "not an architecture name"),
    "arch-local-dir": (_set("arch", "local-dir:/tmp/model"), "not an architecture name"),
    "arch-path": (_set("arch", "../../model.py"), "not an architecture name"),
    "version-str": (_set("version", "abc"), "'version' must be"),
    "version-bool": (_set("version", True), "'version' must be"),
    "version-zero": (_set("version", 0), "'version' must be"),
    "version-future": (_set("version", 99), "upgrade netlens"),
    "no-version": (_drop("version"), "has no 'version'"),
    "no-arch": (_drop("arch"), "has no 'arch'"),
    "no-state": (_drop("state_dict"), "has no 'state_dict'"),
    "odd-key": (_set("evil", 1), "unknown key"),
    "state-list": (_set("state_dict", [1, 2]), "dict of tensors"),
    "state-empty": (_set("state_dict", {}), "dict of tensors"),
    "state-not-tensor": (_tensor("conv1.weight", 3.0), "not a tensor"),
    "state-missing-key": (
        lambda c: (c["state_dict"].pop("classifier.5.bias"), c)[1],
        "not in the file",
    ),
    "state-none": (_tensor("extra", None), "not a tensor"),
    "state-extra-key": (_tensor("extra.weight", __import__("torch").zeros(2)), "not in the model"),
    "state-wrong-shape": (
        _tensor("classifier.5.weight", __import__("torch").zeros(7, 84)),
        "in the file",
    ),
    "state-sparse": (
        _tensor("classifier.5.bias", __import__("torch").zeros(3).to_sparse()),
        "dense CPU",
    ),
    "state-meta": (
        _tensor("classifier.5.bias", __import__("torch").zeros(3, device="meta")),
        "dense CPU",
    ),
    "state-complex": (
        _tensor(
            "classifier.5.bias", __import__("torch").zeros(3, dtype=__import__("torch").complex64)
        ),
        "dense CPU",
    ),
    "classes-str": (_set("classes", "abc"), "list of 1 to"),
    "classes-ints": (_set("classes", [1, 2, 3]), "class 0 must be"),
    "classes-newline": (_set("classes", ["a", "b\nc", "d"]), "control characters"),
    "classes-count": (_set("classes", ["a", "b"]), "names 2 classes but builds 3"),
    "preprocess-huge": (_set("preprocess.size", [60000, 60000]), "beyond any image model"),
    "preprocess-list": (_set("preprocess", [1]), "dict of settings"),
    "preprocess-std0": (_set("preprocess.std", [0.0]), "std must be positive"),
    "preprocess-channels": (_set("preprocess.channels", 7), "channels must be 1 or 3"),
    "preprocess-crop": (_set("preprocess.crop_pct", 1e-9), "crop_pct"),
    "preprocess-interp": (_set("preprocess.interpolation", "magic"), "interpolation"),
    "record-list": (_set("record", [1]), "'record' must be a dict"),
    "record-bomb": (_set("record", {"x": _nested(40)}), "too deep or too large"),
}


# -- pickles and archives --------------------------------------------------------------------
class Touch:
    """Unpickling this creates the file ``marker`` (code execution, made visible)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


class ExecTouch(Touch):
    """The same through ``exec`` of source text."""

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _pickle(obj: object, protocol: int) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=protocol)


def _torch_bytes(obj: object, *, zip_format: bool = True) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def _bare_zip(payload: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    return buf.getvalue()


def evil_pickles(marker: Path) -> dict[str, bytes]:
    """File name → bytes; loading any of them without trust must never create ``marker``."""
    touch, run = Touch(marker), ExecTouch(marker)
    files = {f"raw-protocol-{p}.pt": _pickle({"state_dict": touch}, p) for p in (0, 2, 4, 5)}
    files["exec.pth"] = _pickle(run, 2)
    files["torch-zip.pt"] = _torch_bytes({"state_dict": {"w": touch}})
    files["torch-legacy.pt"] = _torch_bytes({"state_dict": {"w": touch}}, zip_format=False)
    ckpt = base_checkpoint()
    ckpt["arch_kwargs"]["widths"] = touch
    files["in-checkpoint.pt"] = _torch_bytes(ckpt)
    ckpt = base_checkpoint()
    ckpt["record"] = {"note": run}
    files["in-record.ckpt"] = _torch_bytes(ckpt)
    files["bare-zip.bin"] = _bare_zip(_pickle(touch, 2))
    files["as-safetensors.safetensors"] = _pickle(touch, 2)
    return files


def zip_bomb(inflated: int = 128 << 20) -> bytes:
    """A torch file whose one tensor record is DEFLATE-compressed: ~0.5 MB that
    ``torch.load`` inflates to ``inflated`` bytes of float32 zeros (1000× for 1 GB)."""
    import io
    import zipfile

    import torch

    numel = inflated // 4
    src = zipfile.ZipFile(io.BytesIO(_torch_bytes({"w": torch.zeros(4)})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compresslevel=1) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                big = b"J" + numel.to_bytes(4, "little")
                data = data.replace(b"K\x04t", big + b"t", 1).replace(
                    b"K\x04\x85", big + b"\x85", 1
                )
            if info.filename.endswith("data/0"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                zi._compresslevel = 1  # fast to build; the ratio stays ~250
                with dst.open(zi, "w", force_zip64=True) as fh:
                    for _ in range(inflated >> 24):
                        fh.write(bytes(1 << 24))
            else:
                dst.writestr(info.filename, data)
    return out.getvalue()


# -- assertions ------------------------------------------------------------------------------
_EXCEPTION_NAME = re.compile(
    r"\b[A-Z]\w*(Error|Exception|Warning|Interrupt)\b|Traceback|StopIteration|\bExit\b"
)


def assert_one_clean_line(text: str) -> str:
    """``text`` is exactly one non-empty line, with no traceback or exception class name."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert not _EXCEPTION_NAME.search(lines[0]), lines[0]
    return lines[0]


def assert_clean_lines(text: str) -> list[str]:
    """Every non-empty line of ``text`` is free of tracebacks and exception class names."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        assert not _EXCEPTION_NAME.search(line), line
    return lines


#: Files a run may leave outside its manifests: the lock, the ablation row store's settings,
#: the checkpoints of ``train`` and the page of ``report`` (each written whole by a rename).
UNLISTED = re.compile(
    r"^(\.netlens\.lock|ablation-config\.json|model(\.last)?\.pt|report-.+\.html)$"
)


def assert_consistent_folder(folder: Path) -> None:
    """``folder`` is absent or holds only whole result sets: every manifest's files there with
    their checksums, nothing else but :data:`UNLISTED` files, no staging folders or temp files."""
    if not folder.exists():
        return
    listed: set[str] = set()
    for manifest in folder.glob("*.manifest.json"):
        listed.add(manifest.name)
        for entry in json.loads(manifest.read_text())["files"]:
            data = (folder / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], (folder, entry["file"])
            listed.add(entry["file"])
    extra = sorted(p.name for p in folder.iterdir() if p.name not in listed)
    assert all(UNLISTED.match(name) for name in extra), (folder, extra)


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file's bytes (None: no folder), to tell that a refused run changed nothing."""
    if not folder.exists():
        return None
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()}


def assert_cli_outcome(
    code: int, stderr: str, out: Path, before: dict[str, bytes] | None, expect: set[int]
) -> str:
    """What every CLI run must give (issue 14): a documented exit status from ``expect``; on
    status 1 exactly one clean ``error:`` line and the output folder as it was; otherwise clean
    lines only, a consistent folder, and on status 3 one ``skipped:`` line per bad item and the
    closing line. Returns the last stderr line."""
    assert code in expect, f"exit status {code}, expected {sorted(expect)}:\n{stderr}"
    if code == 1:
        line = assert_one_clean_line(stderr)
        assert line.startswith(("error:", "interrupted")), line
        after = snapshot(out)
        assert after == before, f"{out} changed: {sorted(after or {})}"
        return line
    lines = assert_clean_lines(stderr)
    assert_consistent_folder(out)
    if code == 3:
        assert any(line.startswith("skipped:") for line in lines), stderr
        assert "exit status 3" in lines[-1], stderr
    return lines[-1] if lines else ""


_GROUPS: dict[tuple[Any, ...], Any] = {}


def build_cli_once(monkeypatch: Any) -> None:
    """Make typer's ``CliRunner`` build the click group of an app once per set of commands:
    it rebuilds it on every ``invoke`` (~70 ms), where ``netlens`` builds it once per process."""
    import typer.main
    import typer.testing

    def built(typer_app: Any) -> Any:
        key = (id(typer_app), *(c.name or "" for c in typer_app.registered_commands))
        if key not in _GROUPS:
            _GROUPS[key] = typer.main.get_command(typer_app)
        return _GROUPS[key]

    monkeypatch.setattr(typer.testing, "_get_command", built)


class Pipe:
    """A FIFO at ``path`` that nobody writes to: opening it for reading waits for a writer.

    After ``grace`` seconds a thread plays that writer for every reader that comes (so a reader
    gets an empty read instead of hanging the test run) and records that it had to: a run that
    never opens the pipe passes at once, whatever the machine's speed.
    """

    def __init__(self, path: Path, grace: float = 30.0) -> None:
        import threading

        self.path, self.opened_by_reader = path, False
        os.mkfifo(path)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._release, args=(grace,), daemon=True)
        self._thread.start()

    def _release(self, grace: float) -> None:
        if self._done.wait(grace):
            return
        while not self._done.wait(0.05):  # end every read the reader starts, until closed
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader waiting now
                continue
            self.opened_by_reader = True
            os.close(fd)

    def close(self) -> None:
        """Stop the writer thread (call when the run under test has returned)."""
        self._done.set()
        self._thread.join()
