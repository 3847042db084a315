"""SIGTERM arriving while the collector runs a finalizer (a weakref callback, a ``__del__``):
the exit raised there was printed ("Exception ignored in: <function WeakKeyDictionary...>")
and dropped, so a torchrun worker stopped by its launcher printed a traceback and went on."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from netlens.distributed.setup import exit_on_sigterm
from netlens.signals import in_finalizer


class _Killed:
    """Sends this process SIGTERM from its finalizer."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes for the handler to run on, still in __del__
            pass


def test_a_finalizers_frame_is_told_apart() -> None:
    seen = []

    class Probe:
        def __del__(self) -> None:
            seen.append(in_finalizer(sys._getframe()))

    Probe()
    assert seen == [True] and not in_finalizer(sys._getframe())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_in_a_finalizer_ends_the_run_just_after_it(capfd) -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info, exit_on_sigterm():
            _Killed()  # collected at once: SIGTERM inside its __del__
            time.sleep(2)  # the signal is taken here, outside the finalizer
        assert exit_info.value.code == 143
        assert "Exception ignored" not in capfd.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, before)
