"""Running behind a gateway: trusted proxy headers, path prefix, and optional API keys.
Pure ASGI middleware, so nothing here copies bodies or adds tasks."""

from __future__ import annotations

import hmac
import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from app.edge.asgi import send_json
from app.edge.paths import METRICS_PATH, OPEN_PATHS, OPEN_PREFIXES

PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class ProxyHeadersMiddleware:
    """From a trusted proxy only: client address from X-Forwarded-For (the last hop that is
    not itself trusted), scheme from X-Forwarded-Proto, and the path prefix the gateway strips
    from X-Forwarded-Prefix (so the OpenAPI page and links carry it)."""

    def __init__(self, app: ASGIApp, trusted: list[str]):
        self.app = app
        self.any = "*" in trusted
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted if t != "*"]
        self._seen: dict[str | None, bool] = {}  # parsing an address costs ~8 us per request

    def _trusted(self, host: str | None) -> bool:
        if self.any:
            return True
        known = self._seen.get(host)
        if known is None:
            try:
                addr = ipaddress.ip_address(host or "")
                known = any(addr in net for net in self.networks)
            except ValueError:
                known = False
            if len(self._seen) >= 4096:  # bounded: forwarded addresses come from clients
                self._seen.clear()
            self._seen[host] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self._trusted((scope.get("client") or (None,))[0]):
            forwarded_for = _header(scope, b"x-forwarded-for")
            if forwarded_for:
                hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
                client = next((h for h in reversed(hops) if not self._trusted(h)), hops[0] if hops else None)
                if client:
                    scope["client"] = (client, 0)
            proto = _header(scope, b"x-forwarded-proto")
            if proto in ("http", "https"):
                scope["scheme"] = proto
            prefix = _header(scope, b"x-forwarded-prefix")
            if prefix and PREFIX_RE.match(prefix.rstrip("/")):
                prefix = prefix.rstrip("/")
                scope["root_path"] = prefix + scope.get("root_path", "")
                scope["path"] = prefix + scope["path"]
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time against
    every configured key. Probes (and /metrics unless protected) stay open; keys are never logged."""

    def __init__(self, app: ASGIApp, keys: list[str], protect_metrics: bool = False):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = OPEN_PATHS if protect_metrics else OPEN_PATHS | {METRICS_PATH}

    def _authorised(self, scope: Scope) -> bool:
        token = _header(scope, b"x-api-key")
        auth = _header(scope, b"authorization")
        if token is None and auth and auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        if not token:
            return False
        given = token.encode("latin-1", "replace")
        ok = False
        for key in self.keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if (path in self.open or path.startswith(OPEN_PREFIXES) or scope["method"] == "OPTIONS"
                or self._authorised(scope)):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, {"error": {"code": "unauthorized", "message":
                                              "a valid API key is required: Authorization: Bearer <key> or X-API-Key: <key>"}},
                        {"WWW-Authenticate": 'Bearer realm="latentserve"'})
