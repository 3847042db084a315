"""``netlens COMMAND --distributed 2`` and signals: the launcher speaks for the run.

- a launcher killed outright (SIGKILL) takes its workers with it: none runs on, and rank 0
  writes no result set after the command has already failed;
- Ctrl-C (SIGINT to the process group) and SIGTERM give one line on stderr and the exit status
  of one process (130, 143) — no torch launcher log line, no line per worker.

Each run is ``stats`` on a tiny model whose forward sleeps (so the run is still going when the
signal comes) and marks, per rank, that it has started computing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux"),
]

SLOW = '''
import os, time
from pathlib import Path
from torch import nn

class Net(nn.Module):
    """A tiny classifier whose forward marks SLOW_MARK/<rank> and then sleeps SLOW_SECS."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        mark = Path(os.environ["SLOW_MARK"]) / os.environ.get("RANK", "0")
        mark.touch()
        time.sleep(float(os.environ.get("SLOW_SECS", "1")))
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))
'''


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from netlens.data.shapes import write_folder

    folder = tmp_path_factory.mktemp("dist-signals")
    (folder / "slow.py").write_text(textwrap.dedent(SLOW))
    sys.path.insert(0, str(folder))
    try:
        import slow as module

        torch.manual_seed(0)
        torch.save(module.Net().state_dict(), folder / "slow.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("slow", None)
    data, _ = write_folder(folder / "shapes", n=12, size=32, seed=4)
    return {"folder": folder, "data": data}


def _start(slow: dict[str, Path], tmp: Path, nproc: int) -> tuple[subprocess.Popen, Path, Path]:
    """``netlens stats`` on the slow model (``--distributed nproc`` when nproc > 1), in a session
    of its own (as a terminal's foreground job: Ctrl-C reaches its whole group)."""
    folder, marks, out = slow["folder"], tmp / "marks", tmp / "out"
    marks.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_MARK": str(marks), "SLOW_SECS": "2"}
    env.pop("NETLENS_THREADS", None)
    cmd = [
        *(sys.executable, "-m", "netlens", "stats", str(folder / "slow.pt")),
        *("--arch", f"{folder / 'slow.py'}:Net", "--size", "32", "--data", str(slow["data"])),
        *("--batch-size", "2", "--threads", "1", "--quiet", "--out", str(out)),
        *(("--distributed", str(nproc)) if nproc > 1 else ()),
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < nproc:  # every rank is computing
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not start computing: {proc.communicate()[1]}")
        time.sleep(0.1)
    return proc, marks, out


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_workers_end_with_a_killed_launcher_and_write_nothing(slow, tmp_path) -> None:
    proc, _, out = _start(slow, tmp_path, 2)
    workers = _children(proc.pid)
    try:
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 8
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _running(w)]
        assert not left, f"workers {left} still running after their launcher was killed"
        time.sleep(1)
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert not [n for n in written if n.endswith((".json", ".npz", ".csv"))], written
    finally:
        for w in workers:  # the old behaviour: orphans that would run on
            if _running(w):
                os.kill(w, signal.SIGKILL)
        err = proc.communicate()[1]
    assert not err.strip(), err  # the workers stopped without a word: the run already failed


def _interrupt(slow: dict[str, Path], tmp: Path, nproc: int, sig: int) -> tuple[int, list[str]]:
    proc, _, _ = _start(slow, tmp, nproc)
    workers = _children(proc.pid)
    try:
        if sig == signal.SIGINT:  # Ctrl-C: the terminal signals the whole foreground group
            os.killpg(proc.pid, sig)
        else:  # `kill`, `timeout`, SLURM: the command's own process
            proc.send_signal(sig)
        err = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if nproc > 1 and _running(w):
                os.kill(w, signal.SIGKILL)
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_says_one_line_as_one_process_does(slow, tmp_path, sig) -> None:
    one = _interrupt(slow, tmp_path / "one", 1, sig)
    two = _interrupt(slow, tmp_path / "two", 2, sig)
    said = "interrupted" if sig == signal.SIGINT else "interrupted (SIGTERM)"
    assert one == (128 + sig, [said])  # the reference: one process
    assert two == one


class _Store:
    """The part of a torch.distributed store that Group reads (nothing recorded)."""

    def check(self, keys: list[str]) -> bool:
        return False


def test_a_worker_whose_launcher_is_gone_stops_at_its_next_exchange(monkeypatch) -> None:
    from netlens.distributed import Group, parent

    gone = subprocess.Popen(["true"])  # a process that has ended: a launcher gone
    gone.wait()
    monkeypatch.setattr(parent, "_STATE", {})
    monkeypatch.setenv(parent.LAUNCHER_ENV, str(gone.pid))
    with pytest.raises(SystemExit) as stopped:
        Group(1, 2, store=_Store()).check()
    assert stopped.value.code == 128 + signal.SIGTERM
    monkeypatch.setattr(parent, "_STATE", {})
    monkeypatch.setenv(parent.LAUNCHER_ENV, str(os.getppid()))  # alive: the run goes on
    Group(1, 2, store=_Store()).check()


def test_a_stop_that_was_swallowed_is_raised_at_the_next_exchange(monkeypatch) -> None:
    from netlens.distributed import Group, parent

    monkeypatch.setattr(parent, "_STOP", [])
    group = Group(1, 2, store=_Store())
    group.check()  # not stopped: nothing
    parent.note_stop(signal.SIGTERM)  # the worker's SystemExit was caught on the way
    with pytest.raises(SystemExit) as stopped:
        Group(1, 2, store=_Store()).check()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not Group(1, 2, store=_Store()).fail(RuntimeError("a half-imported module"))
