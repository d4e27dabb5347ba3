"""The README and docs/ stay true to the repository.

The README's map of the code is the first thing a newcomer reads, so it must name only
paths that exist and must name every package under krt/: adding a package without
mapping it fails here. Links between README.md and docs/*.md (anchors included) must
resolve, so a page or section moved away breaks a test rather than a reader's click,
and a module path the docs quote in backticks must still be there.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = (README, *sorted((REPO / "docs").glob("*.md")))

ROOTS = ("krt", "console", "scripts", "deploy", "tests", "docs")
"""Top-level directories: a path that starts with one is named from the repository root."""
ROOTED = rf"(?:{'|'.join(ROOTS)})/[\w./-]*"
PATH_IN_TEXT = re.compile(rf"(?<![\w./-])({ROOTED}|[\w-]+\.(?:py|sh|md))")
"""A path in a map line's description: rooted (``tests/fakes.py``, ``krt/``), or a file
name relative to the entry it describes (``protocol.py`` under ``wire/``)."""
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
CODE_PATH = re.compile(rf"`({ROOTED})`")


def _map_block() -> list[str]:
    """The lines of the README's code map: the fenced block that starts with ``krt/``."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    maps = [block.splitlines() for block in blocks if block.startswith("krt/")]
    assert len(maps) == 1, "README.md must hold one code map: a fenced block starting with krt/"
    return maps[0]


def _map_paths() -> dict[Path, str]:
    """Every path the map names, each with the map line that names it.

    An unindented entry is a top-level path; an indented one lies in the last unindented
    directory above it. Paths in an entry's description are rooted, or relative to the
    entry (a directory) or to the directory holding it (a file).
    """
    named: dict[Path, str] = {}
    parent = REPO
    for line in _map_block():
        if not line.strip():
            continue
        name, _, description = line.strip().partition(" ")
        entry = (parent if line[0].isspace() else REPO) / name
        if not line[0].isspace():
            parent = entry
        named[entry] = line
        base = entry if name.endswith("/") else entry.parent
        for token in PATH_IN_TEXT.findall(description):
            token = token.rstrip(".")
            named[(REPO if token.split("/")[0] in ROOTS and "/" in token else base) / token] = line
    return named


def _without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(_without_code_blocks(page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_code_map_names_only_paths_that_exist() -> None:
    missing = [
        f"{path.relative_to(REPO)} (from: {line.strip()[:60]})"
        for path, line in _map_paths().items()
        if not path.exists()
    ]
    assert not missing, "README.md's code map names paths that do not exist:\n" + "\n".join(missing)


def test_the_code_map_names_every_package() -> None:
    mapped = {path.resolve() for path in _map_paths()}
    packages = sorted(init.parent for init in (REPO / "krt").rglob("__init__.py"))
    unmapped = [
        str(package.relative_to(REPO)) + "/" for package in packages if package.resolve() not in mapped
    ]
    assert not unmapped, "packages missing from README.md's code map (add a line for each):\n" + "\n".join(
        unmapped
    )


def test_links_between_the_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(_without_code_blocks(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:: not ours to check offline
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_paths_the_pages_quote_exist() -> None:
    missing = [
        f"{page.relative_to(REPO)}: {quoted}"
        for page in PAGES
        for quoted in CODE_PATH.findall(page.read_text(encoding="utf-8"))
        if not (REPO / quoted).exists()
    ]
    assert not missing, "paths quoted in the docs that do not exist:\n" + "\n".join(missing)
