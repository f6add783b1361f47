"""Pausing Python's cyclic garbage collector around allocation-heavy work.

Loading, building and translating a large mesh allocate millions of objects that stay alive. The
collector's generation-2 passes walk that whole growing heap again and again, which measured as more
than half of the time of each of those steps at 1000 Services (bench/scale.py). None of them makes
reference cycles that need collecting before they return, so the collector is paused for their duration
and resumes (and catches up) afterwards. The pure layers never call this; the layers that drive them do.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (nests; re-enabled only by the outermost pause)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
