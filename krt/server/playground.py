"""``GET /``: the playground, a page that speaks through krt's WebSocket in a browser.

The page, its script, its style and its AudioWorklet ship inside the package
(``krt/server/static/``) and are served from here, so it works offline and behind the
same port, key and proxy as everything else. The page is public (it holds no secret and
says how to enter the key); the WebSocket it opens is not. ``KRT_PLAYGROUND=off``
turns it off (a 404, as for any unknown path).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krt.server.http import FrontDoor

PAGE_PATH = "/"
ASSET_PREFIX = "/playground/"
ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "pcm-player.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
"""What the page loads, each by ``ASSET_PREFIX`` + its name (the worklet must be a URL)."""
HEADERS = (
    # The browser itself holds the page to this server: nothing loads from elsewhere,
    # whatever a future edit adds.
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; connect-src 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-cache"),
)


def route(path: str) -> bool:
    """Whether ``path`` is the playground's."""
    return path == PAGE_PATH or (path.startswith(ASSET_PREFIX) and path[len(ASSET_PREFIX) :] in ASSETS)


async def serve(door: FrontDoor, path: str, *, key_required: bool) -> None:
    """Answer a request for one of the playground's files (``route(path)`` holds)."""
    if door.request_head.method not in (b"GET", b"HEAD"):
        await door.respond(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
        return
    if path == PAGE_PATH:
        page = _text("index.html").replace("{{key_required}}", "true" if key_required else "false")
        await door.respond_bytes(200, page.encode(), [*HEADERS, ("Content-Type", "text/html; charset=utf-8")])
        return
    name = path[len(ASSET_PREFIX) :]
    await door.respond_bytes(200, _text(name).encode(), [*HEADERS, ("Content-Type", ASSETS[name])])


@functools.cache
def _text(name: str) -> str:
    return resources.files("krt.server").joinpath("static", name).read_text(encoding="utf-8")
