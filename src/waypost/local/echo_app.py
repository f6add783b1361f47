"""What a built-in echo workload answers: HTTP request in, response plan out (no I/O).

Two flavours, matching the two upstream echo programs (conformance README §2):

- ``basic``: gateway-api `echo-basic` (source at gateway-api 54d82bd83^, `conformance/echo-basic/echo-basic.go`):
  a JSON document describing the request.
- ``advanced``: Istio's test echo app (`pkg/test/echo/server/endpoint/http.go`), which the
  `echo-advanced` image is built from: ``Key=Value`` lines.

Both are Go `net/http` servers, so the request as they report it follows Go's rules: header names in
`textproto.CanonicalMIMEHeaderKey` form, the Host header moved out of the header map, `RequestURI` being
the raw request-target. The connection layers (`echo_http1`, `echo_http2`) build an `EchoRequest` that
already follows those rules; this module decides the answer. Waiting (`?delay=`) and resetting the
connection (`/retry/`) are returned as part of the plan, so the caller owns all timing and sockets.
"""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from waypost.durations import parse_go_duration
from waypost.local.echo_go import clean_path, go_json, go_json_indented, is_token, split_target

FLAVORS = ("basic", "advanced", "ext-authz")  # ext-authz: Istio's sample external authorizer (local.extauthz)

_STATUS_RE = re.compile(r"/status/(\d\d\d)")
# Outgoing header values must not smuggle a line break (Go replaces them with spaces, headerNewlineToSpace).
_NEWLINES = str.maketrans({"\r": " ", "\n": " ", "\x00": " "})
_MAX_RETRY_IDS = 100_000


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """One HTTP request as Go's server would hand it to the echo handler."""

    method: str
    target: str                      # raw request-target, Go's RequestURI: path plus query
    host: str                        # Host header / :authority as received
    proto: str                       # "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"
    headers: dict[str, list[str]]    # canonical name → values in arrival order; no Host
    port: int                        # the port the request arrived on
    remote: str                      # "ip:port" of the caller

    @property
    def remote_ip(self) -> str:
        return self.remote.rpartition(":")[0].strip("[]")


@dataclass(frozen=True, slots=True)
class EchoResponse:
    """What to do with a request: optionally wait, then answer or reset the connection."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0               # seconds to wait before answering (or resetting)
    reset: bool = False              # close the connection with a TCP RST instead of answering
    log: str | None = None           # the line to print to stdout now (before any delay)


def _header_list(headers: dict[str, list[str]]) -> tuple[tuple[str, str], ...]:
    # Go writes response headers sorted by key (http.Header.writeSubset) and skips invalid names.
    return tuple(
        (name, value.translate(_NEWLINES))
        for name in sorted(headers) if is_token(name)
        for value in headers[name]
    )


class _RetryAttempts:
    """echo-basic's in-memory attempt counter per `uuid` (one per pod); bounded, oldest forgotten first."""

    def __init__(self) -> None:
        self._attempts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def take(self, uuid: str, succeed_after: int) -> bool:
        """Record one attempt; True when this attempt must still fail."""
        seen = self._attempts.get(uuid, 0)
        if seen >= succeed_after:
            return False
        self._attempts[uuid] = seen + 1
        self._attempts.move_to_end(uuid)
        if len(self._attempts) > _MAX_RETRY_IDS:
            self._attempts.popitem(last=False)
        return True


class EchoApp:
    """The echo handler of one workload (pod); shared by all its ports, as one process serves them upstream."""

    def __init__(self, *, namespace: str, pod: str, flavor: str, service_version: str = "") -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown echo flavor {flavor!r} (want one of {', '.join(FLAVORS)})")
        self.namespace = namespace
        self.pod = pod
        self.flavor = flavor
        self.service_version = service_version
        self._retries = _RetryAttempts()

    # -- routing ---------------------------------------------------------------------------------------

    def handle(self, request: EchoRequest) -> EchoResponse:
        if self.flavor == "ext-authz":
            from waypost.local.extauthz import http_decision

            headers = {name.lower(): values[0] for name, values in request.headers.items() if values}
            status, answer, body, line = http_decision(request.method, request.host, request.target, headers, b"")
            return EchoResponse(status, (*answer, ("Content-Type", "text/plain; charset=utf-8")), body, log=line)
        if request.target == "*" and request.method == "OPTIONS":
            return EchoResponse(200)  # Go's server answers `OPTIONS *` itself (globalOptionsHandler)
        path, query = split_target(request.target)
        if self.flavor == "basic" and request.method != "CONNECT":
            # echo-basic's `preserveSlashes` collapses "//" before its ServeMux, which then redirects
            # unclean paths (`/a/../b`) and subtree roots without their slash (`/status` → `/status/`).
            path = path.replace("//", "/")
            target = clean_path(path)
            if target == "/status" or target == "/retry":
                target += "/"
            if target != path:
                return self._redirect(request, target, query)
        if path == "/health":
            return EchoResponse(200, (("Content-Type", "text/plain; charset=utf-8"),), b"OK")
        if path.startswith("/status/"):
            return self._status(request)
        if path.startswith("/retry/"):
            return self._retry(request, _query(query))
        return self._echo(request, _query(query))

    def _redirect(self, request: EchoRequest, path: str, query: str) -> EchoResponse:
        location = quote(path, safe="/:@$&+,;=") + (f"?{query}" if query else "")
        body = b""
        headers: list[tuple[str, str]] = [("Location", location)]
        if request.method in ("GET", "HEAD"):
            headers.append(("Content-Type", "text/html; charset=utf-8"))
            if request.method == "GET":
                body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
        return EchoResponse(301, tuple(headers), body)

    def _status(self, request: EchoRequest) -> EchoResponse:
        # echo-basic matches the raw RequestURI, so `/status/503?x=1` is a 400 there too.
        match = _STATUS_RE.fullmatch(request.target)
        code = int(match.group(1)) if match else 400
        if code < 200:
            # Go's WriteHeader rejects codes below 100, and a 1xx is only an interim answer
            # followed by 200; a bare final 200 is what a client sees in the end either way.
            code = 200
        return EchoResponse(code)

    def _retry(self, request: EchoRequest, query: dict[str, str]) -> EchoResponse:
        uuid = query.get("uuid", "")
        if not uuid:
            return EchoResponse(400, (("Content-Type", "text/plain; charset=utf-8"),), b"uuid is required")
        try:
            succeed_after = int(query.get("succeedAfter", ""))
        except ValueError:
            return EchoResponse(400, (("Content-Type", "text/plain; charset=utf-8"),), b"succeedAfter is required")
        if not self._retries.take(uuid, succeed_after):
            return self._echo(request, query)
        delay = 0.0
        if query.get("delayRetry"):
            try:
                delay = max(0.0, parse_go_duration(query["delayRetry"]))
            except ValueError as error:
                return _json_error(500, str(error))
        try:
            code = int(query.get("responseCode", ""))
        except ValueError:
            # No responseCode: echo-basic hijacks the connection and closes it with SO_LINGER 0.
            return EchoResponse(0, delay=delay, reset=True)
        return EchoResponse(code if 200 <= code <= 999 else 500, delay=delay)

    # -- echo ------------------------------------------------------------------------------------------

    def _echo(self, request: EchoRequest, query: dict[str, str]) -> EchoResponse:
        log = f"Echoing back request made to {request.target} to client ({request.remote})"
        if self.flavor == "basic":
            return self._echo_basic(request, query, log)
        return self._echo_advanced(request, query, log)

    def _echo_basic(self, request: EchoRequest, query: dict[str, str], log: str) -> EchoResponse:
        delay = 0.0
        if query.get("delay"):
            try:
                delay = max(0.0, parse_go_duration(query["delay"]))
            except ValueError as error:
                return _json_error(500, str(error), log=log)
        document = {
            "path": request.target,
            "host": request.host,
            "method": request.method,
            "proto": request.proto,
            "headers": request.headers,
            "httpPort": str(request.port),
            "namespace": self.namespace,
            "ingress": "",
            "service": "",
            "pod": self.pod,
        }
        headers = _echo_set_headers(request)
        headers["Content-Type"] = ["application/json"]
        headers["X-Content-Type-Options"] = ["nosniff"]
        return EchoResponse(200, _header_list(headers), go_json_indented(document), delay=delay, log=log)

    def _echo_advanced(self, request: EchoRequest, query: dict[str, str], log: str) -> EchoResponse:
        # Istio's handler reports parameter errors as lines before the payload and still answers.
        lines: list[str] = []
        delay = 0.0
        if query.get("delay"):
            try:
                delay = max(0.0, parse_go_duration(query["delay"]))
            except ValueError as error:
                lines.append(f"error delaying response error: {error}")
        headers = _echo_set_headers(request)
        if query.get("headers"):
            for pair in query["headers"].split(","):
                parts = pair.split(":")
                if len(parts) != 2:
                    lines.append(f'response headers error: invalid "{pair}" (want name:value)')
                    break
                headers[parts[0]] = [parts[1]]  # no canonicalisation, as upstream
        status, error = _pick_code(query.get("codes", ""))
        if error:
            lines.append(f"codes error: {error}")
        lines.extend(self._payload(request))
        headers["Content-Type"] = ["application/text"]
        body = "".join(line + "\n" for line in lines).encode()
        return EchoResponse(status, _header_list(headers), body, delay=delay, log=log)

    def _payload(self, request: EchoRequest) -> list[str]:
        """Istio's `addResponsePayload` field order (Cluster and IstioVersion are never configured here)."""
        lines = [
            f"ServiceVersion={self.service_version}",
            f"ServicePort={request.port}",
            f"Host={request.host}",
            f"URL={request.target}",
        ]
        if self.namespace:
            lines.append(f"Namespace={self.namespace}")
        lines += [f"Method={request.method}", f"Proto={request.proto}", f"IP={request.remote_ip}"]
        for name in sorted(request.headers):
            lines.extend(f"RequestHeader={name}:{value}" for value in request.headers[name])
        lines.append(f"Hostname={self.pod}")
        return lines


def _query(raw: str) -> dict[str, str]:
    """Go's `Request.FormValue` over the URL query: the first value of each name."""
    if not raw:
        return {}
    values: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        values.setdefault(name, value)
    return values


def _echo_set_headers(request: EchoRequest) -> dict[str, list[str]]:
    """echo-basic `writeEchoResponseHeaders`: `X-Echo-Set-Header: A:1,b:2` → response headers, name case kept.

    A repeated name is appended with ",". Values are trimmed (upstream keeps the first one's leading space,
    which every HTTP/1 client strips anyway, and HTTP/2 forbids).
    """
    headers: dict[str, list[str]] = {}
    for pairs in request.headers.get("X-Echo-Set-Header", ()):
        for pair in pairs.split(","):
            name, _, value = pair.strip().partition(":")
            value = value.strip()
            if name in headers:
                headers[name][0] += "," + value
            else:
                headers[name] = [value]
    return headers


def _pick_code(spec: str) -> tuple[int, str]:
    """Istio's `?codes=code[:weight],...`: a weighted random status. On a bad spec Go answers 200."""
    if not spec:
        return 200, ""
    codes: list[int] = []
    weights: list[int] = []
    for item in spec.split(","):
        parts = item.split(":")
        try:
            if len(parts) > 2:
                raise ValueError(f'invalid "{item}" (want code or code:count)')
            code = int(parts[0])
            if not 200 <= code < 600:
                raise ValueError(f"invalid HTTP response code {code}")
            weight = int(parts[1]) if len(parts) == 2 else 1
            if weight < 0:
                raise ValueError(f"invalid count {weight}")
        except ValueError as error:
            return 200, str(error)
        codes.append(code)
        weights.append(weight)
    if sum(weights) <= 0:
        return codes[-1], ""
    return random.choices(codes, weights)[0], ""


def _json_error(status: int, message: str, *, log: str | None = None) -> EchoResponse:
    """echo-basic `processError`."""
    headers = (("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff"))
    return EchoResponse(status, headers, go_json({"message": message}), log=log)
