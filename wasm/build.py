"""Assembles the proxy-wasm modules of this folder from their WebAssembly text into wasm/out/<name>.wasm.

    .venv/bin/python wasm/build.py           # (re)write wasm/out/*.wasm and wasm/out/SHA256SUMS
    .venv/bin/python wasm/build.py --check   # exit 1 unless wasm/out/ holds exactly what the sources give

The assembler is the `wasmtime` package from PyPI (its `wasmtime.wat2wasm`, i.e. the wasm-tools text
parser), pinned below: the same sources and the same assembler give the same bytes on every run and
every machine, so the committed artifacts can always be checked against (or rebuilt from) the sources.

A module source may say `;; @include runtime.wat` on a line of its own: that line is replaced by the
text of wasm/runtime.wat (the proxy-wasm plumbing every module shares) before assembling.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
MODULES = ("add_header", "deny_without_header", "trap")
ASSEMBLER = "wasmtime"
ASSEMBLER_VERSION = "50.0.1"

_INCLUDE = re.compile(r"^[ \t]*;;[ \t]*@include[ \t]+(\S+)[ \t]*$", re.MULTILINE)
# `(data (i32.const N) "text")  ;; LEN`: the code uses N and LEN as constants, so both are checked.
_DATA = re.compile(r'\(data \(i32\.const (\d+)\) "((?:[^"\\]|\\.)*)"\)\s*;;\s*(\d+)')


def source(name: str) -> str:
    """The complete WebAssembly text of module `name`, includes spliced in."""

    def splice(match: re.Match[str]) -> str:
        return (HERE / match.group(1)).read_text()

    return _INCLUDE.sub(splice, (HERE / f"{name}.wat").read_text())


def _check_data_segments(name: str, text: str) -> None:
    """Each data segment's length comment must match its text, and no two segments may overlap."""
    spans = []
    for match in _DATA.finditer(text):
        start, literal, declared = int(match.group(1)), match.group(2), int(match.group(3))
        size = len(re.sub(r"\\(?:[0-9a-fA-F]{2}|.)", "x", literal).encode())
        if size != declared:
            raise SystemExit(f"{name}: data at {start} is {size} bytes, its comment says {declared}")
        spans.append((start, start + size))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise SystemExit(f"{name}: data segments overlap at {start}")


def assemble(name: str) -> bytes:
    """The .wasm bytes of module `name`."""
    import wasmtime

    text = source(name)
    _check_data_segments(name, text)
    return bytes(wasmtime.wat2wasm(text))


def sha256sums(artifacts: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}.wasm\n" for name, data in artifacts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with wasm/out/ instead of writing it")
    args = parser.parse_args(argv)
    try:
        from importlib.metadata import version

        found = version(ASSEMBLER)
    except Exception:  # noqa: BLE001 - not installed: say how to get it
        print(f"needs the PyPI package {ASSEMBLER}=={ASSEMBLER_VERSION} (pip install {ASSEMBLER}=={ASSEMBLER_VERSION})", file=sys.stderr)
        return 2
    if found != ASSEMBLER_VERSION:
        print(f"warning: {ASSEMBLER} {found} is not the pinned {ASSEMBLER_VERSION}: bytes may differ", file=sys.stderr)
    artifacts = {name: assemble(name) for name in MODULES}
    sums = sha256sums(artifacts)
    if args.check:
        stale = [f"{name}.wasm" for name, data in artifacts.items()
                 if not (OUT / f"{name}.wasm").is_file() or (OUT / f"{name}.wasm").read_bytes() != data]
        if not (OUT / "SHA256SUMS").is_file() or (OUT / "SHA256SUMS").read_text() != sums:
            stale.append("SHA256SUMS")
        if stale:
            print(f"wasm/out is stale ({', '.join(stale)}): run .venv/bin/python wasm/build.py", file=sys.stderr)
            return 1
        print(sums, end="")
        return 0
    OUT.mkdir(exist_ok=True)
    for name, data in artifacts.items():
        (OUT / f"{name}.wasm").write_bytes(data)
    (OUT / "SHA256SUMS").write_text(sums)
    print(sums, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
