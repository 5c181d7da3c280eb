"""The operating system's name of a thread, so `top -H`, `ps -L` and per-thread CPU figures say which is which.

Python (before 3.14) names its threads only for itself: every thread of a worker shows up as "python" to the
system. name_thread() sets the name of the calling thread (Linux: prctl PR_SET_NAME, at most 15 bytes) and
does nothing where that is not available. make bench-tax reads these names to split each process' CPU by thread.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_NAME = 15
_prctl = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def name_thread(name: str) -> None:
    """Name the calling thread (first 15 bytes of `name`) as the system shows it."""
    if _prctl is not None:
        _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
