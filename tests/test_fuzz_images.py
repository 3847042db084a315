"""Fuzz: hostile images in a batch with good ones (issue 14, item 6).

For every format netlens reads, seeded mutants of a real encoded image: cut at drawn offsets,
bytes overwritten at drawn places, header bombs of drawn sizes, each under a drawn odd name.
``netlens.images.read_image`` is the oracle: it must read a mutant or refuse it with one
clean line (an ``ImageError``, never another exception). Then the whole batch, a good image
first, goes through ``netlens cam`` in this process: exit status 3, one ``skipped:`` line per
refused file and the closing line, whole outputs for the good image; with ``--strict``,
exit status 1 and no output folder; through the Python API, the same files skipped and the
model unchanged. One child process runs a batch of drawn-size bombs of every format through
the real CLI: exit status 3 and peak RSS under 1 GB.

The CI run is one seed (``NETLENS_FUZZ_SEED``, default 14); ``NETLENS_FUZZ=all`` draws more
mutants per format.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import cv2
import pytest
import torch
from hostile_inputs import (
    BOMB_FORMATS,
    EVERYTHING,
    ODD_NAMES,
    SEED,
    Pipe,
    assert_cli_outcome,
    assert_one_clean_line,
    base_checkpoint,
    build_cli_once,
    encode,
    header_bomb,
    netlens_cli,
    run_measured,
    small_image,
    snapshot,
    write_bytes_name,
)
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ImageError
from netlens.images import read_image
from netlens.testing import assert_model_unchanged

PER_FORMAT = 12 if EVERYTHING else 4
MB = 1024  # ru_maxrss is in KB


def mutant(data: bytes, ext: str, rng: random.Random) -> bytes:
    """One hostile variant of the encoded image ``data``."""
    how = rng.choice(("cut", "cut", "scribble", "bomb", "empty-tail"))
    if how == "cut":
        return data[: rng.randrange(0, len(data))]
    if how == "scribble":
        raw = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(0, min(len(raw), 256))  # the header, where parsers decide
            raw[at] = rng.randrange(256)
        return bytes(raw)
    if how == "bomb":
        return header_bomb(ext, rng.randint(10_001, 60_000), rng.randint(10_001, 60_000))
    return data[: len(data) // 2] + bytes(len(data) // 2)


def odd_name(rng: random.Random, i: int, ext: str) -> bytes:
    """A drawn odd file name, made unique by ``i``."""
    stem = Path(os.fsdecode(rng.choice(ODD_NAMES))).stem
    return os.fsencode(f"{stem}-{i}") + ext.encode()


def batch(folder: Path, ext: str, seed: int = SEED) -> list[Path]:
    """The drawn mutants of format ``ext`` written to ``folder`` (seeded)."""
    rng = random.Random(f"{seed}{ext}")
    data = encode(ext, small_image(40, 56, seed))
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_bytes_name(folder, odd_name(rng, i, ext), mutant(data, ext, rng))
        for i in range(PER_FORMAT)
    ]


def refused(paths: list[Path]) -> list[Path]:
    """The files ``read_image`` refuses, each in one clean line (the oracle)."""
    bad = []
    for path in paths:
        try:
            read_image(path)
        except ImageError as exc:
            assert_one_clean_line(str(exc))
            bad.append(path)
    return bad


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    torch.save(base_checkpoint(), root / "m.pt")
    cv2.imwrite(str(root / "good.png"), small_image(28, 28, SEED))
    return {"model": root / "m.pt", "good": root / "good.png"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("NETLENS_DEBUG", raising=False)
    monkeypatch.delenv("NETLENS_MAX_PIXELS", raising=False)
    build_cli_once(monkeypatch)
    yield
    torch.set_num_threads(threads)


def cam(args: list[str], out: Path, expect: set[int]) -> list[str]:
    """``netlens cam ARGS --out OUT --quiet`` in this process, judged; its stderr lines."""
    before = snapshot(out)
    res = CliRunner().invoke(app, ["cam", *args, "--out", str(out), "--quiet"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert_cli_outcome(res.exit_code, res.stderr, out, before, expect)
    return res.stderr.splitlines()


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Every format's drawn mutants, and those the oracle refuses."""
    root = tmp_path_factory.mktemp("mutants")
    files = [p for ext in BOMB_FORMATS for p in batch(root / ext.strip("."), ext)]
    return files, refused(files)


def test_a_batch_of_mutants_skips_each_refused_file(fixtures, mutants, tmp_path):
    files, bad = mutants
    assert 0 < len(bad) < len(files), "the draw should give files of both kinds"
    args = [str(fixtures["model"]), str(fixtures["good"]), *map(str, files)]
    lines = cam(args, tmp_path / "out", {3})
    skipped = [line for line in lines if line.startswith("skipped:")]
    assert len(skipped) == len(bad), (bad, skipped)
    assert (tmp_path / "out" / "cam.json").is_file()
    cam([*args, "--strict"], tmp_path / "strict", {1})  # stops at the first, writes nothing


def test_a_pipe_among_the_images_is_skipped_without_being_opened(fixtures, tmp_path):
    pipe = Pipe(tmp_path / "pipe.png")
    try:
        args = [str(fixtures["model"]), str(fixtures["good"]), str(pipe.path)]
        lines = cam(args, tmp_path / "out", {3})
    finally:
        pipe.close()
    assert not pipe.opened_by_reader, "cam waited on a pipe"
    assert any(line.startswith("skipped:") and "pipe" in line for line in lines), lines


def test_the_python_api_skips_the_same_files_and_leaves_the_model(fixtures, mutants):
    files, bad = mutants
    lens = netlens.load(fixtures["model"])
    lens.model.train()
    with assert_model_unchanged(lens.model):
        result = lens.cam([fixtures["good"], *files])
    assert len(result.skipped) == len(bad), (result.skipped, bad)
    assert result.heatmaps.shape[0] == 1 + len(files) - len(bad)


def test_drawn_bombs_of_every_format_in_one_batch_stay_under_1gb(fixtures, tmp_path):
    rng = random.Random(SEED)
    files = []
    for ext in BOMB_FORMATS:
        w, h = rng.randint(20_000, 60_000), rng.randint(20_000, 60_000)
        name = odd_name(rng, len(files), ext)
        files.append(write_bytes_name(tmp_path, name, header_bomb(ext, w, h)))
    out = tmp_path / "out"
    argv = [*netlens_cli(), "cam", str(fixtures["model"]), str(fixtures["good"])]
    res = run_measured([*argv, *map(str, files), "--out", str(out), "--quiet"])
    assert res["rc"] == 3, res
    lines = res["err"].splitlines()
    assert sum(line.startswith("skipped:") for line in lines) == len(files), res["err"]
    assert res["peak_kb"] < 1024 * MB, res
    print(f"{len(files)} bombs in one batch: peak RSS {res['peak_kb'] / MB:.0f} MB")


def test_the_mutants_are_seeded(tmp_path):
    first = [p.read_bytes() for p in batch(tmp_path / "a", ".png")]
    assert [p.read_bytes() for p in batch(tmp_path / "b", ".png")] == first
    assert [p.read_bytes() for p in batch(tmp_path / "c", ".png", SEED + 1)] != first
