"""Which server a tool talks to, and with which key, from the same ``.env`` the server reads.

The seed's tools found the pod through ``RUNPOD_TCP_HOST`` / ``RUNPOD_TCP_PORT``; krt keeps
that and adds ``KRT_URL`` for a full URL (wss://, a proxy path). Command-line flags win,
then the environment, then ``.env``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs

from krt.config import read_dotenv
from krt.wire.protocol import WS_PATH

if TYPE_CHECKING:
    import argparse


@attrs.frozen
class Target:
    url: str
    """The WebSocket URL without the key."""
    api_key: str

    @property
    def url_with_key(self) -> str:
        if not self.api_key:
            return self.url
        parts = urlsplit(self.url)
        query = "&".join(filter(None, [parts.query, urlencode({"api_key": self.api_key})]))
        return urlunsplit(parts._replace(query=query))

    @property
    def http_base(self) -> str:
        parts = urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, "", "", ""))

    def describe(self) -> str:
        return f"{self.url} ({'with' if self.api_key else 'no'} API key)"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--url", help="full WebSocket URL (default: KRT_URL, else RUNPOD_TCP_HOST/PORT, else localhost:8000)"
    )
    group.add_argument("--host", help="server host (overrides RUNPOD_TCP_HOST)")
    group.add_argument("--port", type=int, help="server port (overrides RUNPOD_TCP_PORT)")
    group.add_argument("--api-key", help="API key (default: API_KEY from the environment or .env)")


def resolve_target(args: argparse.Namespace, env_file: Path = Path(".env")) -> Target:
    values = {**read_dotenv(env_file), **os.environ}
    api_key = args.api_key if args.api_key is not None else values.get("API_KEY", "")
    if args.url:
        return Target(websocket_url(args.url), api_key)
    if args.host or args.port or not values.get("KRT_URL"):
        host = args.host or values.get("RUNPOD_TCP_HOST") or "127.0.0.1"
        port = args.port or int(values.get("RUNPOD_TCP_PORT") or 8000)
        return Target(f"ws://{host}:{port}{WS_PATH}", api_key)
    return Target(websocket_url(values["KRT_URL"]), api_key)


def websocket_url(url: str) -> str:
    """Accept what people paste: http(s):// becomes ws(s)://, a bare host gets the route."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise SystemExit(f"krt: {url!r} is not a server URL; use ws://HOST:PORT or wss://HOST")
    path = parts.path if parts.path not in ("", "/") else WS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def describe_connection_error(exc: BaseException, target: Target) -> str | None:
    """A one-line explanation of why a tool could not connect, or None if it is not that."""
    from trio_websocket import ConnectionRejected, ConnectionTimeout, HandshakeError

    if isinstance(exc, ConnectionRejected):
        if exc.status_code == 401:
            return f"the server at {target.url} refused the API key (HTTP 401): set API_KEY in .env or pass --api-key"
        if exc.status_code == 503:
            return f"the server at {target.url} is not ready yet (HTTP 503: loading or draining); try again shortly"
        return f"the server at {target.url} refused the connection (HTTP {exc.status_code})"
    if isinstance(exc, OSError):
        return f"cannot reach the server at {target.url}: {exc.strerror or exc} (is it running? `just start`)"
    if isinstance(exc, ConnectionTimeout):
        return f"the server at {target.url} did not answer in time (is the address right? a firewall?)"
    if isinstance(exc, HandshakeError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            return describe_connection_error(cause, target)
        return f"the WebSocket handshake with {target.url} failed: {exc or type(exc).__name__}"
    return None
