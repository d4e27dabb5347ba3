"""``krt console``: attach the operator console to a running server's admin socket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from krt.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help="admin socket to attach to (default: KRT_ADMIN_SOCKET, run/krt-admin.sock "
        "of a server started from this directory)",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    # Textual is imported here, not at the top: `krt --help` must not pay for it.
    from console.app import KrtConsole
    from console.feed import Feed

    path: Path = args.socket or Path(config.server.admin_socket or "run/krt-admin.sock")
    feed = Feed(path)
    KrtConsole(feed, feed.run).run()
    return 0
