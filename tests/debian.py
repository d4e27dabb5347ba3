"""Debian packages a test needs, installed when the machine lacks them (CI starts bare)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL_LOCK = Path(tempfile.gettempdir()) / "krt-tests-apt.lock"


def debian_binary(name: str, package: str) -> str:
    """The path of ``name``, installing Debian's ``package`` if it is missing
    (root only; ``apt-get update`` only when the package lists are too old to have it)."""
    if found := _found(name):
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{name} is not installed and this user cannot install it: apt-get install {package}")
    # Test workers run side by side: one installs, the others wait and find it installed
    # (two apt-gets at once fail on dpkg's lock).
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if found := _found(name):
            return found
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if subprocess.run(install, env=environment, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=environment, capture_output=True, check=True)
            subprocess.run(install, env=environment, capture_output=True, check=True)
    return _found(name) or f"/usr/sbin/{name}"


def _found(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(path) for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if path.exists()), None
    )
