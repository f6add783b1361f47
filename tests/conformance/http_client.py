"""HTTP/1.1 requests sent from inside a pod: the pod IP is bound as the source address, so the mesh sees
that pod's identity, exactly as for the pod's own traffic.

Not `waypost.local.client.send`: the corpus needs the exact request-target on the wire (`raw_path`), a
Host header that differs from the address dialled, and keep-alive sessions for the 500-request
distribution cases. Redirects are never followed.
"""

from __future__ import annotations

import ssl
import threading

import httpx

from tests.conformance.judge import Exchange

_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    # httpx builds (and loads CA certificates into) an SSL context per transport unless given one; these
    # requests are plaintext, so one shared context keeps a fresh connection per request cheap.
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context()
        return _ssl_context


def _url(address: str, port: int, target: str) -> httpx.URL:
    return httpx.URL(scheme="http", host=address, port=port, raw_path=target.encode("ascii"))


def _exchange(response: httpx.Response) -> Exchange:
    return Exchange(
        status=response.status_code,
        status_text=str(response.status_code),
        headers=list(response.headers.multi_items()),
        body=response.content.decode("utf-8", "replace"),
    )


def _error(exc: Exception) -> Exchange:
    return Exchange(status=None, status_text=f"no response ({type(exc).__name__}: {exc})")


class HttpSession:
    """Keep-alive connections from one source IP; one per thread."""

    def __init__(self, source_ip: str, timeout: float) -> None:
        transport = httpx.HTTPTransport(local_address=source_ip, retries=0, verify=_ssl())
        self._client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)

    def request(self, address: str, port: int, *, method: str, target: str,
                headers: list[tuple[str, str]]) -> Exchange:
        try:
            return _exchange(self._client.request(method, _url(address, port, target), headers=headers))
        except httpx.HTTPError as exc:
            return _error(exc)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "HttpSession":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def http_request(source_ip: str, address: str, port: int, *, method: str, target: str,
                 headers: list[tuple[str, str]], timeout: float) -> Exchange:
    """One request on a new connection, as upstream's in-pod client makes one per invocation.

    `headers` must include Host (httpx adds one from the address otherwise).
    """
    with HttpSession(source_ip, timeout) as session:
        return session.request(address, port, method=method, target=target, headers=headers)
