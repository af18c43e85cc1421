"""Who may come in, and how much each key may hold open on this replica.

- ``authorize``: the Host and Origin checks, then the API key (``Authorization: Bearer KEY``;
  on the stream also the subprotocol ``bearer.<base64url KEY>``, which browsers can send).
  Host: one of ``allowed_hosts``; by default a loopback name, or any name when the server has
  API keys (a page on another site that rebinds its DNS name to 127.0.0.1 reaches a keyless
  server with its own name as Host, and is refused). Origin (sent by browsers): the app's own
  (its host:port equals Host) or one of ``allowed_origins``, for the stream and for requests
  that change state; programs send none.
- ``Admission``: open streams and transfers (requests reading a body or sending a result), per
  key and for all keys, against the settings' caps: 429 with ``Retry-After`` above them. With
  the caps below the deployment's ``max_ongoing_requests`` (100), connections a client holds
  open can never take the request slots that ``/healthz`` and the short requests need.

Everything here is a few dictionary lookups: a refused connection costs the replica ~1 ms.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from serve.api import ApiError
from serve.settings import ServeSettings, authorized_owner

LOOPBACK_NAMES = ("localhost",)
SUBPROTOCOL = "vsr.v1"  # what the server answers a browser that offered it
BEARER_PREFIX = "bearer."  # then the key, base64url-encoded (subprotocols allow few characters)
CHANGING_METHODS = ("POST", "PUT", "PATCH", "DELETE", "WEBSOCKET")
RETRY_AFTER_S = {"streams": 10, "transfers": 5}


def host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(headers: Headers, settings: ServeSettings, has_keys: bool) -> None:
    name = host_name(headers.get("host", ""))
    allowed = settings.allowed_hosts
    if ("*" in allowed or name in allowed) if allowed else (has_keys or _is_loopback(name)):
        return
    raise ApiError(403, "host_not_allowed", f"this server does not answer to the host name {name!r} "
                   "(user_config allowed_hosts)")


def check_origin(headers: Headers, settings: ServeSettings) -> None:
    origin = headers.get("origin")
    if origin is None or origin in settings.allowed_origins:
        return
    try:
        parts = urlsplit(origin)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        own = default is not None and (parts.hostname, parts.port or default) == _host_port(headers, default)
    except ValueError:  # a malformed port
        own = False
    if own:
        return
    raise ApiError(403, "origin_not_allowed", f"requests from pages of {origin[:80]!r} are not allowed "
                   "(user_config allowed_origins)")


def _host_port(headers: Headers, default_port: int) -> tuple[str, int]:
    host = headers.get("host", "").strip().lower()
    parts = urlsplit(f"//{host}")
    return parts.hostname or "", parts.port or default_port


def bearer_from_subprotocols(protocols: list[str]) -> str | None:
    """``Authorization``'s value from a browser's subprotocol ``bearer.<base64url key>``."""
    for protocol in protocols:
        if protocol.startswith(BEARER_PREFIX):
            encoded = protocol[len(BEARER_PREFIX):]
            try:
                key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return "Bearer "  # a malformed key is a wrong key
            return f"Bearer {key}"
    return None


def authorize(headers: Headers, method: str, settings: ServeSettings, api_keys: list[str],
              subprotocols: list[str] | None = None) -> str:
    """The caller's owner id (``authorized_owner``), after the Host and Origin checks; 403 or
    401 ``ApiError`` when refused."""
    check_host(headers, settings, bool(api_keys))
    if method.upper() in CHANGING_METHODS:
        check_origin(headers, settings)
    authorization = headers.get("authorization") or bearer_from_subprotocols(subprotocols or [])
    owner = authorized_owner(authorization, api_keys)
    if owner is None:
        problem = "wrong API key" if authorization else "this server needs an API key"
        how = ("'Authorization: Bearer <key>' with the handshake, or (browsers) the subprotocols "
               f"['{SUBPROTOCOL}', '{BEARER_PREFIX}<key, base64url>']") if method == "WEBSOCKET" else \
            "the header 'Authorization: Bearer <key>'"
        raise ApiError(401, "unauthorized", f"{problem}: send {how}", headers={"WWW-Authenticate": "Bearer"})
    return owner


class Admission:
    """What each key holds open on this replica, against the caps of the current settings."""

    def __init__(self, settings: Callable[[], ServeSettings]):
        self._settings = settings
        self._held: Counter[tuple[str, str]] = Counter()  # (kind, owner) -> open
        self._total: Counter[str] = Counter()  # kind -> open

    def _caps(self, kind: str) -> tuple[int, int]:
        settings = self._settings()
        if kind == "streams":
            return settings.max_streams_per_key, settings.max_streams
        return settings.max_transfers_per_key, settings.max_transfers

    def acquire(self, kind: str, owner: str) -> Callable[[], None]:
        """Take one of ``kind`` ("streams" or "transfers") for ``owner``, or 429; returns the
        release (call it exactly once)."""
        per_key, total = self._caps(kind)
        if self._held[kind, owner] >= per_key or self._total[kind] >= total:
            what = "open streams" if kind == "streams" else "uploads and downloads at once"
            whose = "for your key" if self._held[kind, owner] >= per_key else "on this server"
            raise ApiError(429, f"too_many_{kind}", f"too many {what} {whose} (at most {per_key} per key, "
                           f"{total} in all); try again later",
                           headers={"Retry-After": str(RETRY_AFTER_S[kind])})
        self._held[kind, owner] += 1
        self._total[kind] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._held[kind, owner] -= 1
                self._total[kind] -= 1

        return release

    @contextmanager
    def hold(self, kind: str, owner: str) -> Iterator[None]:
        release = self.acquire(kind, owner)
        try:
            yield
        finally:
            release()

    def as_dict(self) -> dict[str, int]:
        return dict(self._total)
