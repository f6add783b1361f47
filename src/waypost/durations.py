"""Go's `time.ParseDuration`, the duration syntax of Istio's networking CRDs (their CEL rules call
`duration(self)`) and of the echo app's `?delay=` parameters."""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_NUMBER = re.compile(r"(\d*)(?:\.(\d*))?")
_DURATION_UNIT = re.compile(r"[^\d.]+")


def parse_go_duration(text: str) -> float:
    """Go's `time.ParseDuration` (e.g. `1.5s`, `300ms`, `1h2m`), in seconds; ValueError with Go's message."""
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    while rest:
        number = _DURATION_NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise ValueError(f'time: invalid duration "{text}"')
        rest = rest[number.end():]
        unit = _DURATION_UNIT.match(rest)
        if unit is None:
            raise ValueError(f'time: missing unit in duration "{text}"')
        rest = rest[unit.end():]
        if unit.group(0) not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit.group(0)}" in duration "{text}"')
        total += float(f"{whole or '0'}.{fraction or '0'}") * _DURATION_UNITS[unit.group(0)]
    return -total if negative else total
