"""Debian packages a test needs, installed when the machine lacks them (CI starts bare)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def debian_binary(name: str, package: str, *, also: tuple[str, ...] = ()) -> str:
    """The path of ``name``, installing Debian's ``package`` (and ``also``) if it is missing
    (root only; ``apt-get update`` only when the package lists are too old to have it)."""
    found = shutil.which(name) or next(
        (str(path) for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if path.exists()), None
    )
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{name} is not installed and this user cannot install it: apt-get install {package}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package, *also]
    if subprocess.run(install, env=environment, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment, capture_output=True, check=True)
        subprocess.run(install, env=environment, capture_output=True, check=True)
    return shutil.which(name) or f"/usr/sbin/{name}"
