"""Proxy access logs made readable: which policy and rule decided a denial."""

from __future__ import annotations

import json
import re

_MATCHED = re.compile(r"rbac_access_denied_matched_policy\[(?:ns\[([^\]]*)\]-policy\[([^\]]*)\]-(rule|group)\[(\d+)\]|none)\]")


def deny_reason(details: str) -> str | None:
    """Envoy's RBAC response-code details → a sentence naming the AuthorizationPolicy and its rule."""
    m = _MATCHED.search(details)
    if m is None:
        return None
    namespace, name, _, index = m.groups()
    if name is None:
        return "denied: no ALLOW AuthorizationPolicy rule matched"
    return f"denied by AuthorizationPolicy {namespace}/{name}, rule {index}"


def readable(line: str) -> str:
    """Appends the deny reason to an access-log line that has one; other lines are unchanged.

    A JSON line (MeshConfig accessLogEncoding JSON) gets it as a `deny_reason` field instead."""
    reason = deny_reason(line)
    if not reason:
        return line
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return f"{line}  # {reason}"
        return json.dumps({**entry, "deny_reason": reason}, separators=(",", ":"))
    return f"{line}  # {reason}"


def is_access_log(line: str) -> bool:
    """Text access-log lines start with `[<ISO time>Z] "`, JSON ones are objects with a start_time;
    Envoy's own log lines start with `[<date> <time>][pid]`."""
    if line.startswith("{") and '"start_time"' in line:
        return True
    return bool(re.match(r'^\[\d{4}-\d\d-\d\dT[^\]]+\] "', line))
