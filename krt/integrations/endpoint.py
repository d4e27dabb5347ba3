"""krt's WebSocket address, from the one address a deployment configures for krt.

Every integration (Pipecat's, LiveKit's) imports it from here, so ``ws://host:port``,
``http://host:port`` and the full route mean the same server to each of them. It knows
no framework: importing it costs neither Pipecat nor LiveKit.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from krt.wire import protocol

__all__ = ["krt_endpoint"]


def krt_endpoint(url: str) -> str:
    """krt's speech route on the server ``url`` names.

    A bare ``ws://host:port`` (or ``http://``) gets krt's one WebSocket path, so a
    deployment can configure the same address for every krt client.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else protocol.WS_PATH
    return urlunsplit(parts._replace(scheme=scheme, path=path))
