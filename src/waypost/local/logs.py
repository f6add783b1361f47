"""Proxy access logs made readable: which policy and rule decided a denial."""

from __future__ import annotations

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
    """Appends the deny reason to an access-log line that has one; other lines are unchanged."""
    reason = deny_reason(line)
    return f"{line}  # {reason}" if reason else line


def is_access_log(line: str) -> bool:
    """Access-log lines start with `[<ISO time>Z] "`; Envoy's own log lines with `[<date> <time>][pid]`."""
    return bool(re.match(r'^\[\d{4}-\d\d-\d\dT[^\]]+\] "', line))
