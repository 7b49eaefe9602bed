"""Who may use the server: vLLM's API key, and same-origin checks on the routes that act on the
server itself (the profiling routes).

* `--api-key KEY` (or VLLM_API_KEY): every route but the public ones (health, version, metrics,
  the API docs) needs `Authorization: Bearer KEY`, else 401 with vLLM's body
  `{"error": "Unauthorized"}`. Keys are compared by SHA-256 digest in constant time.
* `admin_check`: a request to an admin route must name this server in its Host header (an IP
  address, localhost, this machine's name, or the `--host` it listens on) and, when a browser
  sends an Origin, come from that same host. A cross-origin POST from a web page, or one
  through a rebound DNS name, is a 403.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import socket
from urllib.parse import urlsplit

API_KEY_ENV = "VLLM_API_KEY"
PUBLIC = ("/health", "/version", "/metrics", "/docs", "/redoc", "/openapi.json")


def api_keys(flag: list[str] | None, environ=os.environ) -> list[str]:
    """The keys from --api-key, else VLLM_API_KEY (as vLLM reads them); none: no check."""
    keys = [k for k in (flag or []) if k] or ([environ[API_KEY_ENV]] if environ.get(API_KEY_ENV) else [])
    return keys


def _public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC)


class ApiKey:
    """ASGI middleware: the bearer token on every non-public route."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def _valid(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.strip().encode("latin-1")).digest()
        return any([secrets.compare_digest(digest, d) for d in self.digests])  # all compared

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or _public(scope["path"]):
            return await self.app(scope, receive, send)
        if self._valid(dict(scope["headers"])):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "Unauthorized"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _host_of(value: str) -> str:
    """The host part of a Host header (`name`, `name:port`, `[v6]:port`), lower case; "" when
    it cannot be read."""
    try:
        return (urlsplit(f"//{value}").hostname or "").lower()
    except ValueError:  # a malformed IPv6 literal, a bad port
        return ""


def _origin_host(origin: str) -> str:
    try:
        return _host_of(urlsplit(origin).netloc)
    except ValueError:
        return ""


def _own_names(listen_host: str) -> set[str]:
    names = {"localhost", listen_host.lower(), socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def admin_check(headers, listen_host: str) -> str | None:
    """Why a request to an admin route is refused (one sentence), or None when it may proceed."""
    host = _host_of(headers.get("host", ""))
    if not host or not (_is_ip(host) or host in _own_names(listen_host)):
        return (f"the Host header {headers.get('host', '')[:80]!r} does not name this server; profiling routes "
                f"answer requests addressed to its IP address, localhost or its host name.")
    origin = headers.get("origin")
    if origin is not None and _origin_host(origin) != host:
        return f"a cross-origin request (Origin {origin[:80]!r}) may not use the profiling routes."
    return None
