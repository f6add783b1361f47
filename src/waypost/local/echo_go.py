"""How Go's `net/http` presents a request, for echo servers that must report it as Go programs do.

Both upstream echo programs are Go servers (gateway-api echo-basic, Istio's echo app), and the reports
the conformance suites read carry Go's conventions: canonical header names, `time.ParseDuration`
syntax, `encoding/json` escaping, ServeMux path cleaning. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Iterable
from urllib.parse import unquote, urlsplit

# RFC 9110 token characters: Go rejects other bytes in header names (and CanonicalMIMEHeaderKey leaves
# such names untouched).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@functools.lru_cache(maxsize=4096)
def canonical_header_key(name: str) -> str:
    """Go's `textproto.CanonicalMIMEHeaderKey`: `x-header-add` → `X-Header-Add`; invalid names unchanged."""
    if not _TOKEN_RE.fullmatch(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def is_token(name: str) -> bool:
    return _TOKEN_RE.fullmatch(name) is not None


def group_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Go's `http.Header`: canonical name → values in arrival order. The caller has dropped Host."""
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        headers.setdefault(canonical_header_key(name), []).append(value)
    return headers


_quote = json.encoder.encode_basestring  # the C implementation when available


def _go_escape(text: str) -> bytes:
    # Go's encoding/json is HTML-safe by default: <, >, & and U+2028/9 are escaped inside strings.
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        if raw in text:
            text = text.replace(raw, escaped)
    return text.encode()


def go_json(document: dict[str, str]) -> bytes:
    """`json.Marshal` of a flat object."""
    return _go_escape(json.dumps(document, ensure_ascii=False, separators=(",", ":")))


def go_json_indented(document: dict[str, str | dict[str, list[str]]]) -> bytes:
    """`json.MarshalIndent(v, "", " ")` of echo-basic's RequestAssertions: strings and one header map.

    Written out by hand because Python's json module drops to its slow pure-Python encoder when indenting.
    """
    out = ["{"]
    last = len(document) - 1
    for index, (key, value) in enumerate(document.items()):
        comma = "," if index < last else ""
        if isinstance(value, str):
            out.append(f"\n {_quote(key)}: {_quote(value)}{comma}")
        elif not value:
            out.append(f"\n {_quote(key)}: {{}}{comma}")
        else:
            out.append(f"\n {_quote(key)}: {{")
            names = sorted(value)
            for name_index, name in enumerate(names):
                values = ",".join(f"\n   {_quote(item)}" for item in value[name])
                out.append(f"\n  {_quote(name)}: [{values}\n  ]{',' if name_index < len(names) - 1 else ''}")
            out.append(f"\n }}{comma}")
    out.append("\n}")
    return _go_escape("".join(out))


def clean_path(path: str) -> str:
    """Go's `net/http.cleanPath` (`path.Clean`, keeping a trailing slash), used by ServeMux redirects."""
    if not path:
        return "/"
    if path[0] != "/":
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def split_target(target: str) -> tuple[str, str]:
    """Request-target → (decoded path, raw query), as Go's `url.ParseRequestURI` gives URL.Path/RawQuery."""
    if target.startswith("/"):
        raw_path, _, query = target.partition("?")
        return (unquote(raw_path) if "%" in raw_path else raw_path), query
    if "://" in target:  # absolute-form, sent to proxies
        parts = urlsplit(target)
        return unquote(parts.path), parts.query
    return "", ""  # `*` (OPTIONS) and authority-form (CONNECT)
