"""Noticing that the `up -f` manifests changed, by polling: no new dependency, and it works on any filesystem.

Each poll stats the manifest files (the same expansion of directories that loading uses). Only when a
file's mtime, size or the set of files changed are their contents hashed; a change counts only when the
hash differs, so `touch` or an editor that rewrites identical bytes reloads nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from waypost.api.load import manifest_files

POLL_INTERVAL = 0.25
# An editor may write a file in several steps; wait until the files stay put this long before reading.
SETTLE = 0.1
SETTLE_MAX = 2.0

Stats = tuple[tuple[str, int, int], ...]


def stat_files(paths: Sequence[str]) -> Stats:
    files, _ = manifest_files(Path(p) for p in paths)
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append((str(f), -1, -1))
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    # A missing -f path shows up as "no file", so creating it later is a change too.
    out.extend((p, -1, -1) for p in paths if not Path(p).exists())
    return tuple(out)


def digest(stats: Stats) -> str:
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(name.encode() + b"\0")
        try:
            h.update(Path(name).read_bytes())
        except OSError:
            h.update(b"\0missing")
        h.update(b"\0")
    return h.hexdigest()


class ManifestWatcher:
    """`changed()` is True once per change of the manifests' content since the previous True (or creation)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._stats = stat_files(self.paths)
        self._digest = digest(self._stats)

    def changed(self) -> bool:
        stats = stat_files(self.paths)
        if stats == self._stats:
            return False
        give_up = time.monotonic() + SETTLE_MAX
        while time.monotonic() < give_up:
            time.sleep(SETTLE)
            settled = stat_files(self.paths)
            if settled == stats:
                break
            stats = settled
        self._stats = stats
        new = digest(stats)
        if new == self._digest:
            return False
        self._digest = new
        return True
