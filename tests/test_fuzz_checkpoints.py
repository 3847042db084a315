"""Fuzz: hostile model files (issue 14, item 6).

- every field of a valid netlens checkpoint (and every item inside it) replaced by a value of
  another type, deleted, or joined by a stranger; seeded (``NETLENS_FUZZ_SEED``), three
  mutations per field in CI, all of them with ``NETLENS_FUZZ=all``;
- pickles built opcode by opcode (every way a pickle can call or build something, and broken
  ones), torch archives with parts missing or cut, safetensors headers that lie;
- architecture sizes drawn at random far beyond memory, loaded in one child process whose peak
  RSS must stay under 1 GB.

``netlens.load`` must load the file or raise a one-line ``NetlensError`` (never another
exception, never code run without ``--trust``); through the CLI, exit status 1, one clean line,
no output folder.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hostile_inputs import (
    EVERYTHING,
    SEED,
    Pipe,
    assert_cli_outcome,
    assert_one_clean_line,
    base_checkpoint,
    run_measured,
    snapshot,
)
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError

MB = 1024  # ru_maxrss is in KB


def _deep(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


# Values of every type a weights-only pickle can hold, and a few it cannot.
STRANGERS = {
    "none": None,
    "true": True,
    "zero": 0,
    "minus": -1,
    "huge-int": 2**70,
    "float": 1.5,
    "nan": math.nan,
    "inf": -math.inf,
    "empty-str": "",
    "long-str": "x" * 5000,
    "path": "../../evil.py",
    "url": "https://example.com/w.pt",
    "empty-list": [],
    "empty-dict": {},
    "list-of-none": [None, None],
    "dict": {"k": 1},
    "bytes": b"\x00\xff",
    "tuple": (1, "a"),
    "tensor": torch.zeros(2),
    "int-tensor": torch.arange(3),
    "deep-list": _deep(400),
    "complex": 1 + 2j,
}


def field_paths(node: object, path: tuple = ()) -> list[tuple]:
    """Every key and list index inside the checkpoint, the checkpoint itself excluded."""
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += field_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += field_paths(value, (*path, i))
    return found


def mutated(ckpt: dict, path: tuple, how: str) -> dict:
    """A copy of ``ckpt`` with the field at ``path`` replaced (``how`` a STRANGERS key),
    deleted (``"delete"``) or joined by an unknown sibling (``"sibling"``)."""
    ckpt = copy.deepcopy(ckpt)
    parent = ckpt
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "sibling" and isinstance(parent, dict):
        parent[f"{last}_extra"] = 1
    elif how == "sibling":
        parent.append(parent[last])
    else:
        parent[last] = STRANGERS[how]
    return ckpt


def mutation_cases(seed: int = SEED, everything: bool = EVERYTHING) -> list[tuple[tuple, str]]:
    rng = random.Random(seed)
    hows = [*STRANGERS, "delete", "sibling"]
    cases = []
    for path in field_paths(base_checkpoint()):
        cases += [(path, h) for h in (hows if everything else rng.sample(hows, 2))]
    return cases


def _id(case: tuple[tuple, str]) -> str:
    return ".".join(map(str, case[0])) + ":" + case[1]


@pytest.fixture(scope="module")
def base() -> dict:
    return base_checkpoint()


def must_load_or_refuse(path: Path, **kwargs: object) -> str | None:
    """``netlens.load`` loads the file (None) or refuses it in one clean line (the line)."""
    try:
        netlens.load(path, **kwargs)
    except NetlensError as exc:
        return assert_one_clean_line(str(exc))
    return None


@pytest.mark.parametrize("case", mutation_cases(), ids=_id)
def test_a_mutated_field_loads_or_is_refused_in_one_line(case, base, tmp_path):
    path, how = case
    file = tmp_path / "m.pt"
    torch.save(mutated(base, path, how), file)
    line = must_load_or_refuse(file)
    if path[0] in ("format", "version", "arch", "state_dict") and how != "sibling":
        assert line is not None, f"{_id(case)} was accepted"


# -- pickles, opcode by opcode ---------------------------------------------------------------
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def opcode_pickles(marker: Path) -> dict[str, bytes]:
    """Raw pickles that try to run ``open(marker, 'w')`` every way the format allows, and
    pickles that are broken or merely hostile to the reader."""
    m, proto = _str(str(marker)), b"\x80\x02"
    call = m + _str("w") + b"\x86"  # TUPLE2 of (marker, "w")
    return {
        "global-reduce": proto + _global("builtins", "open") + call + b"R.",
        "stack-global": b"\x80\x04" + _str("builtins") + _str("open") + b"\x93" + call + b"R.",
        "inst": b"(" + m + _str("w") + b"ibuiltins\nopen\n.",
        "obj": b"(" + _global("builtins", "open") + m + _str("w") + b"o.",
        "newobj": proto + _global("pathlib", "Path") + b"(" + m + b"t\x81.",
        "build": proto + _global("collections", "OrderedDict") + b")R}" + b"b.",
        "persid": b"P" + str(marker).encode() + b"\n.",
        "binpersid": proto + m + b"Q.",
        "ext1": proto + b"\x82\x01.",
        "exec": proto
        + _global("builtins", "exec")
        + _str(f"open({str(marker)!r}, 'w')")
        + b"\x85R.",
        "memo-miss": proto + b"j" + struct.pack("<I", 2**31 - 1) + b".",
        "truncated": pickle.dumps({"state_dict": {"w": [1.0] * 50}}, 2)[:-7],
        "bad-opcode": proto + b"\xff.",
        "no-stop": proto + b"}",
        "empty": b"",
        "random": random.Random(SEED).randbytes(4096),
        "deep-list": proto + b"]" * 50_000 + b"a" * 49_999 + b".",
        "huge-frame": b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"}.",
    }


def archive_variants(base: dict) -> dict[str, bytes]:
    """torch zip archives with a part missing, cut, renamed, or hostile records."""
    import io

    buf = io.BytesIO()
    torch.save(base, buf)
    whole = buf.getvalue()
    src = zipfile.ZipFile(io.BytesIO(whole))

    def rebuilt(keep=lambda n: True, data=lambda n, d: d) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if keep(info.filename):
                    dst.writestr(info.filename, data(info.filename, src.read(info.filename)))
        return out.getvalue()

    return {
        "cut-in-half.pt": whole[: len(whole) // 2],
        "no-directory.pt": whole[:-200],
        "no-data-pkl.pt": rebuilt(keep=lambda n: not n.endswith("data.pkl")),
        "no-storage.pt": rebuilt(keep=lambda n: "/data/" not in n),
        "short-storage.pt": rebuilt(data=lambda n, d: d[:3] if "/data/" in n else d),
        "garbage-pkl.pt": rebuilt(
            data=lambda n, d: b"\x80\x02}q\x00(" if n.endswith(".pkl") else d
        ),
        "no-version.pt": rebuilt(keep=lambda n: not n.endswith("version")),
        "many-entries.pt": _many_entries(),
        "safetensors-huge-header.safetensors": struct.pack("<Q", 2**62) + b"{}",
        "safetensors-past-end.safetensors": struct.pack("<Q", 10_000) + b'{"a":',
        "safetensors-bad-json.safetensors": struct.pack("<Q", 5) + b"{nope",
        "safetensors-lying-offsets.safetensors": _lying_safetensors(),
        "safetensors-huge-shape.safetensors": _lying_safetensors(shape=[2**40, 2**40]),
    }


def _many_entries() -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for i in range(20_000):
            dst.writestr(f"archive/data/{i}", b"")
    return out.getvalue()


def _lying_safetensors(shape: list[int] | None = None) -> bytes:
    header = {"w": {"dtype": "F32", "shape": shape or [4], "data_offsets": [0, 1 << 40]}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(16)


@pytest.fixture(scope="module")
def hostile_files(base, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("files")
    marker = root / "pwned"
    files = {f"{k}.pt": v for k, v in opcode_pickles(marker).items()}
    files |= archive_variants(base)
    paths = {}
    for name, data in files.items():
        paths[name] = root / name
        paths[name].write_bytes(data)
    return marker, paths


FILE_NAMES = sorted(
    [f"{k}.pt" for k in opcode_pickles(Path("m"))] + list(archive_variants(base_checkpoint()))
)


@pytest.mark.parametrize("name", FILE_NAMES)
def test_hostile_file_is_refused_in_one_line_and_runs_nothing(name, hostile_files, tmp_path):
    marker, paths = hostile_files
    line = must_load_or_refuse(paths[name])
    assert line is not None, f"{name} loaded"
    assert not marker.exists(), f"{name} ran code without --trust"


@pytest.mark.parametrize("name", FILE_NAMES[::4])
def test_hostile_file_through_the_cli(name, hostile_files, tmp_path, monkeypatch):
    monkeypatch.delenv("NETLENS_DEBUG", raising=False)
    marker, paths = hostile_files
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["kernels", str(paths[name]), "--out", str(out)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert_cli_outcome(res.exit_code, res.stderr, out, snapshot(out), {1})
    assert not marker.exists()


def test_a_pipe_is_refused_without_being_opened(tmp_path):
    """A FIFO given as the model (``<(cmd)``, a named pipe): opening it would wait forever."""
    pipe = Pipe(tmp_path / "model.pt")
    try:
        line = must_load_or_refuse(pipe.path)
    finally:
        pipe.close()
    assert not pipe.opened_by_reader, "netlens.load waited on a pipe"
    assert line is not None and "pipe" in line, line


# -- sizes beyond memory ---------------------------------------------------------------------
SIZE_FIELDS = {  # arch_kwargs field of the base VGG: a value that would need terabytes
    "widths": lambda r: [r.choice([4, 10**5, 10**6])] * 3,
    "depth": lambda r: r.choice([10**4, 10**6, 2**40]),
    "num_classes": lambda r: r.choice([2**24, 10**9, 2**62]),
}


def size_bombs(seed: int = SEED, n: int = 6) -> list[dict]:
    """``n`` checkpoints whose architecture sizes are drawn far beyond memory."""
    rng = random.Random(seed)
    bombs = []
    for _ in range(n):
        ckpt = base_checkpoint()
        field = rng.choice(sorted(SIZE_FIELDS))
        ckpt["arch_kwargs"][field] = SIZE_FIELDS[field](rng)
        if field == "num_classes":
            ckpt["classes"] = None
        if ckpt["arch_kwargs"]["widths"] == [4] * 3 and field == "widths":
            ckpt["arch_kwargs"]["widths"] = [2**20] * 3
        bombs.append(ckpt)
    return bombs


def test_size_bombs_are_refused_under_1gb_in_a_child(tmp_path):
    """Peak RSS of one child process meeting every drawn size bomb through ``netlens.load``,
    then the first one through the real CLI entry point (one interpreter: torch is imported
    once; the baseline, importing torch, is ~650 MB here)."""
    files = []
    for i, ckpt in enumerate(size_bombs()):
        files.append(tmp_path / f"bomb{i}.pt")
        torch.save(ckpt, files[-1])
    out = tmp_path / "out"
    script = (
        "import sys, netlens\n"
        "from netlens.cli.app import main\n"
        "for f in sys.argv[1:]:\n"
        "    try: netlens.load(f); print('LOADED', f)\n"
        "    except netlens.NetlensError as e: print(e)\n"
        f"sys.argv = ['netlens', 'kernels', sys.argv[1], '--out', {str(out)!r}]\n"
        "main()\n"
    )
    res = run_measured([sys.executable, "-c", script, *map(str, files)])
    lines = res["out"].splitlines()
    assert len(lines) == len(files) and not any(x.startswith("LOADED") for x in lines), res
    for line in lines:
        assert_one_clean_line(line)
    assert res["rc"] == 1 and not out.exists(), res
    assert assert_one_clean_line(res["err"]).startswith("error:"), res
    assert res["peak_kb"] < 1024 * MB, res
    print(f"size bombs: peak RSS {res['peak_kb'] / MB:.0f} MB for {len(files)} files and the CLI")


def test_the_mutations_cover_every_field_and_are_seeded(base):
    cases = mutation_cases()
    assert {c[0] for c in cases} == set(field_paths(base))
    assert len({c[1] for c in cases}) > len(STRANGERS) // 2
    assert mutation_cases(SEED) == cases and mutation_cases(SEED + 1) != cases
