"""Judging what one request observed against a case of cases.yaml (conformance README §3), in two modes.

- *upstream* mode checks only the fields in `defaults.upstream_enforced` (status, backend, request and
  response headers), exactly what the upstream mesh suite enforces;
- *strict* mode also checks namespace, request.path/host, redirect.* and every field under `derived`.

Everything here is pure: an `Exchange` (what the client saw, plus the echo server's report) in, a list of
failure messages out. Every message names the field, the expected value and the value observed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

STRICT = "strict"
UPSTREAM = "upstream"
MODES = (STRICT, UPSTREAM)

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Echo:
    """The `Key=Value` text of Istio's echo app (`echo-advanced`), HTTP or gRPC flavour."""

    fields: dict[str, str]                       # first value of each key
    request_headers: list[tuple[str, str]]       # RequestHeader lines, in order (sorted by name, values in order)

    @property
    def hostname(self) -> str | None:
        return self.fields.get("Hostname")

    @property
    def namespace(self) -> str | None:
        return self.fields.get("Namespace")

    def request_header(self, name: str) -> list[str]:
        return [v for n, v in self.request_headers if n.lower() == name.lower()]


def parse_echo(text: str) -> Echo | None:
    """None when the text is not an echo answer (it carries no `Hostname=` line)."""
    fields: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key or " " in key:
            continue  # "[N body] …" lines of the upstream client, error lines, blank lines
        if key == "RequestHeader":
            # gRPC metadata includes pseudo-headers: `RequestHeader=:authority:echo:7070`.
            colon = value.find(":", 1) if value.startswith(":") else value.find(":")
            if colon > 0:
                headers.append((value[:colon], value[colon + 1:]))
            continue
        fields.setdefault(key, value)
    if "Hostname" not in fields:
        return None
    return Echo(fields, headers)


@dataclass(frozen=True)
class Exchange:
    """One request as the client observed it."""

    status: int | None                           # None: no HTTP status (connection error, gRPC error)
    status_text: str                             # how to report the status: "404", "gRPC status 14 …", error
    headers: list[tuple[str, str]] = field(default_factory=list)   # response headers (and gRPC trailers)
    body: str = ""
    # For cases with `reaches_backend: false`: echo log lines showing the request reached a pod.
    backend_log: tuple[str, ...] = ()

    @property
    def echo(self) -> Echo | None:
        return parse_echo(self.body)

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def enforced(case: dict[str, Any], corpus: dict[str, Any], mode: str, name: str) -> bool:
    """Is check `name` (e.g. "request.headers", "redirect.scheme", "reaches_backend") judged in `mode`?"""
    if mode == STRICT:
        return True
    if name in case.get("derived", ()):
        return False
    return name in corpus["defaults"]["upstream_enforced"]


def _got_text(values: list[str]) -> str:
    return "absent" if not values else repr(",".join(values))


def judge_single(case: dict[str, Any], corpus: dict[str, Any], ex: Exchange, mode: str) -> list[str]:
    expect = case["expect"]
    on = lambda name: enforced(case, corpus, mode, name)  # noqa: E731
    failures: list[str] = []
    echo = ex.echo
    no_echo = "no echo answer (no Hostname= line in the response body)"

    if on("status") and ex.status not in expect["status"]:
        failures.append(f"status: expected one of {expect['status']}, got {ex.status_text}")

    backend = expect.get("backend")
    if on("backend") and backend is not None:
        if echo is None:
            failures.append(f"backend: expected a pod named {backend}-…, got {no_echo}")
        elif not echo.hostname.startswith(backend):
            failures.append(f"backend: expected a pod named {backend}-…, got {echo.hostname!r}")

    if "namespace" in expect and on("namespace") and ex.status is not None and 200 <= ex.status < 300:
        got = no_echo if echo is None else (repr(echo.namespace) if echo.namespace is not None
                                             else "no Namespace= line from the echo pod")
        if echo is None or echo.namespace != expect["namespace"]:
            failures.append(f"namespace: expected {expect['namespace']!r}, got {got}"
                            + (f" (pod {echo.hostname})" if echo else ""))

    request = expect.get("request") or {}
    for key, echo_field in (("path", "URL"), ("host", "Host")):
        if key in request and on(f"request.{key}"):
            got = None if echo is None else echo.fields.get(echo_field)
            if got != request[key]:
                failures.append(f"request.{key}: expected {request[key]!r} at the backend, got "
                                + (no_echo if echo is None else repr(got)))
    if request.get("headers") and on("request.headers"):
        for name, value in request["headers"].items():
            if echo is None:
                failures.append(f"request.headers[{name}]: expected {value!r} at the backend, got {no_echo}")
                continue
            got = echo.request_header(name)
            if ",".join(got) != value or not got:
                failures.append(f"request.headers[{name}]: expected {value!r} at the backend, got {_got_text(got)}")
    if request.get("absent_headers") and on("request.absent_headers"):
        for name in request["absent_headers"]:
            if echo is None:
                failures.append(f"request.absent_headers[{name}]: expected absent at the backend, got {no_echo}")
            elif got := echo.request_header(name):
                failures.append(f"request.absent_headers[{name}]: expected absent at the backend, got {_got_text(got)}")

    response = expect.get("response") or {}
    if response.get("headers") and on("response.headers"):
        for name, value in response["headers"].items():
            got = ex.header(name)
            if ",".join(got) != value or not got:
                failures.append(f"response.headers[{name}]: expected {value!r}, got {_got_text(got)}")
    if response.get("absent_headers") and on("response.absent_headers"):
        for name in response["absent_headers"]:
            if got := ex.header(name):
                failures.append(f"response.absent_headers[{name}]: expected absent, got {_got_text(got)}")

    if expect.get("redirect"):
        failures.extend(_judge_redirect(expect["redirect"], ex, on))

    if expect.get("reaches_backend") is False and on("reaches_backend"):
        if echo is not None:
            failures.append(f"reaches_backend: expected an answer from the mesh, got an echo answer from pod "
                            f"{echo.hostname}")
        elif ex.backend_log:
            failures.append(f"reaches_backend: expected no echo pod to receive the request, got log line "
                            f"{ex.backend_log[0]!r}")
    return failures


def _judge_redirect(redirect: dict[str, Any], ex: Exchange, on) -> list[str]:
    failures: list[str] = []
    locations = ex.header("Location")
    if not locations:
        names = [f"redirect.{k}" for k in ("scheme", "host", "port", "path", "location") if k in redirect]
        if any(on(n) for n in names):
            failures.append(f"redirect: expected a Location header ({redirect.get('location')}), got none")
        return failures
    location = locations[0]
    parts = urlsplit(location)
    try:
        port = parts.port
    except ValueError:
        port = None
    for key, got in (("scheme", parts.scheme), ("host", parts.hostname or ""), ("path", parts.path)):
        if key in redirect and on(f"redirect.{key}") and got != redirect[key]:
            failures.append(f"redirect.{key}: expected {redirect[key]!r}, got {got!r} (Location: {location})")
    if "port" in redirect and on("redirect.port"):
        want = redirect["port"]
        if want is None:
            if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
                failures.append(f"redirect.port: expected none or the {parts.scheme or '?'} default, got {port} "
                                f"(Location: {location})")
        elif port != int(want):
            failures.append(f"redirect.port: expected {int(want)}, got {port if port is not None else 'none'} "
                            f"(Location: {location})")
    if "location" in redirect and on("redirect.location"):
        # The canonical form omits the scheme's default port; an explicit default port is accepted (README §3).
        netloc = parts.netloc
        if port is not None and port == _DEFAULT_PORTS.get(parts.scheme):
            netloc = netloc.rsplit(":", 1)[0]
        canonical = parts._replace(netloc=netloc).geturl()
        if canonical != redirect["location"]:
            failures.append(f"redirect.location: expected {redirect['location']!r}, got {location!r}")
    return failures


def backend_key(pod: str) -> str:
    """`echo-v1-7c9d8b6f4-x2kqz` → `echo-v1`: the pod name minus its last two '-'-separated segments."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def judge_distribution(spec: dict[str, Any], exchanges: list[Exchange], ok_status: list[int]) -> list[str]:
    """One attempt of a traffic-split case; [] when it meets every check."""
    failures: list[str] = []
    counts: Counter[str] = Counter()
    unattributed: Counter[str] = Counter()
    for ex in exchanges:
        echo = ex.echo
        if ex.status not in ok_status or echo is None:
            unattributed[ex.status_text if echo is None else f"{ex.status_text} from {echo.hostname}"] += 1
        else:
            counts[backend_key(echo.hostname)] += 1
    total = len(exchanges)
    if unattributed:
        detail = ", ".join(f"{n}× {what}" for what, n in unattributed.most_common(3))
        failures.append(f"responses: expected every response to be {ok_status} from an echo pod, got "
                        f"{sum(unattributed.values())}/{total} that were not ({detail})")
    outside = sorted(set(counts) - set(spec["allowed_backends"]))
    if outside:
        failures.append(f"allowed_backends: expected only {spec['allowed_backends']}, got responses from "
                        + ", ".join(f"{b} ({counts[b]})" for b in outside))
    must = set(spec["backends_that_must_receive_traffic"])
    if set(counts) != must:
        failures.append(f"backends_that_must_receive_traffic: expected exactly {sorted(must)}, got {sorted(counts)}")
    tolerance = spec["tolerance"]
    for backend, share in spec["shares"].items():
        got = counts[backend] / total if total else 0.0
        if abs(got - share) > tolerance + 1e-9:
            failures.append(f"shares[{backend}]: expected {share:.2f}±{tolerance:.2f}, got {got:.3f} "
                            f"({counts[backend]}/{total})")
    return failures


def distribution_summary(exchanges: list[Exchange]) -> str:
    counts = Counter(backend_key(e.echo.hostname) if e.echo else e.status_text for e in exchanges)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


_PLACEHOLDER = re.compile(r"\{POD_IP:([^}]*)\}")


def placeholders(text: str) -> list[str]:
    """The selectors of the `{POD_IP:<selector>}` placeholders in `text`."""
    return _PLACEHOLDER.findall(text)


def substitute(text: str, ips: dict[str, str]) -> str:
    """Replace `{POD_IP:<selector>}` with the pod IP (IPv6 bracketed)."""
    return _PLACEHOLDER.sub(lambda m: f"[{ips[m.group(1)]}]" if ":" in ips[m.group(1)] else ips[m.group(1)], text)
