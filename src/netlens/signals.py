"""Raising from a signal handler at a point where Python would swallow the exception.

A handler runs between bytecodes of whatever the main thread is doing, also inside a weakref
callback or a ``__del__`` the garbage collector started. An exception raised there is printed
("Exception ignored in: <function WeakKeyDictionary...remove>", a traceback) and dropped: the
SIGTERM that should have ended the run with one line is lost. :func:`in_finalizer` tells such
a point; the handler then sends the signal again a moment later, from a timer thread, and the
main thread takes it at its next ordinary bytecode.
"""

from __future__ import annotations

import os
import threading
from types import FrameType

__all__ = ["in_finalizer", "resend_later"]

_FINALIZER_FILES = ("weakref.py", "_weakrefset.py")


def in_finalizer(frame: FrameType | None) -> bool:
    """Whether ``frame`` (the one a signal interrupted), or a caller of it, is a finalizer: a
    ``__del__`` or code of :mod:`weakref` (whose callbacks the collector runs)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith(_FINALIZER_FILES):
            return True
        frame = frame.f_back
    return False


def resend_later(signum: int, delay: float = 0.02) -> None:
    """Send ``signum`` to this process again after ``delay`` seconds."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
