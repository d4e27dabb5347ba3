"""The architecture's layering as a checked fact.

The import contracts live in pyproject.toml under [tool.importlinter]; `lint-imports` checks
them statically (``just check`` runs it too). These tests run it, prove that each contract can
actually break, and check what a process really loads: the serving path must never import
torch (on the onnx backend), matplotlib or textual, and the console must never import trio or
the engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# What the serving process imports; a module renamed away must be renamed here too.
SERVING_MODULES = (
    "krt.server.app",
    "krt.server.listener",
    "krt.server.session",
    "krt.server.outbox",
    "krt.server.input_buffer",
    "krt.server.responses",
    "krt.server.delivery",
    "krt.server.state",
    "krt.engine.facade",
    "krt.engine.pipeline",
    "krt.engine.scheduler",
    "krt.engine.runner",
    "krt.synth.onnx_backend",
    "krt.synth.loading",
    "krt.metrics.record",
    "krt.wire.protocol",
)
NEVER_IN_SERVER = ("torch", "kokoro", "matplotlib", "textual")


def contract_names() -> dict[str, str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {contract["id"]: contract["name"] for contract in config["tool"]["importlinter"]["contracts"]}


def lint_imports(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flat(text: str) -> str:
    """lint-imports wraps long contract names; compare with all whitespace runs as one space."""
    return re.sub(r"\s+", " ", text)


def bare_env() -> dict[str, str]:
    """Nothing from the caller's environment that could pick a backend or a device."""
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"Contracts: (\d+) kept, (\d+) broken\.", output)
    assert summary is not None, output
    assert (int(summary[1]), int(summary[2])) == (len(contract_names()), 0), output


# One violation per contract, each in a module of its own so that no existing file is touched.
VIOLATIONS = [
    pytest.param("synth-owns-runtimes", "krt/engine", "import torch", id="engine-imports-torch"),
    pytest.param("synth-owns-runtimes", "krt", "import onnxruntime", id="top-level-imports-onnxruntime"),
    pytest.param("core-below-tools", "krt/engine", "import krt.tools", id="engine-imports-tools"),
    pytest.param("core-below-tools", "krt/server", "import krt.metrics.plots", id="server-imports-plots"),
    pytest.param("core-without-ui", "krt/server", "import matplotlib", id="server-imports-matplotlib"),
    pytest.param("console-is-a-client", "console", "import trio", id="console-imports-trio"),
    pytest.param(
        "console-is-a-client", "console", "import krt.client.speech", id="console-imports-trio-via-client"
    ),
    pytest.param("tools-bench-independent", "krt/tools", "import krt.bench", id="tools-import-bench"),
    pytest.param("client-is-a-library", "krt/client", "import krt.server", id="client-imports-server"),
    pytest.param("client-is-a-library", "krt/client", "import krt.engine", id="client-imports-engine"),
    pytest.param(
        "server-through-facade",
        "krt/server",
        "import krt.engine.scheduler",
        id="a-new-server-module-reaches-past-the-facade",
    ),
    pytest.param("serving-layers", "krt/synth", "import krt.engine", id="synth-imports-engine"),
    pytest.param("serving-layers", "krt/media", "import krt.synth", id="media-imports-synth"),
    pytest.param("wire-is-plain", "krt/wire", "import trio", id="a-new-wire-module-imports-trio"),
]


def copy_tree(tmp_path: Path) -> None:
    for tree in ("krt", "console"):
        shutil.copytree(REPO / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")


@pytest.mark.parametrize(("contract", "package", "statement"), VIOLATIONS)
def test_a_violating_import_breaks_its_contract(
    tmp_path: Path, contract: str, package: str, statement: str
) -> None:
    copy_tree(tmp_path)
    violator = tmp_path / package / "layering_violation.py"
    violator.write_text(f'"""Breaks a contract on purpose."""\n\n{statement}\n')

    result = lint_imports(tmp_path, pythonpath=tmp_path)

    output = flat(result.stdout + result.stderr)
    assert result.returncode != 0, output
    name = flat(contract_names()[contract])
    assert f"{name} BROKEN" in output
    # It is this import that broke it, read from the copy (not from the installed krt).
    module = ".".join(violator.relative_to(tmp_path).with_suffix("").parts)
    assert f"{module} -> {statement.removeprefix('import ')}" in output, output


@pytest.mark.parametrize(
    ("contract", "module", "statement"),
    [
        # The schema is one module, not a package: the violation goes into (a copy of) it.
        pytest.param("wire-is-plain", "krt.wire.admin_schema", "import trio", id="admin-schema-imports-trio"),
        pytest.param(
            "server-through-facade",
            "krt.server.session",
            "import krt.engine.scheduler",
            id="session-reaches-past-the-facade",
        ),
    ],
)
def test_an_import_added_to_an_existing_module_breaks_its_contract(
    tmp_path: Path, contract: str, module: str, statement: str
) -> None:
    copy_tree(tmp_path)
    source = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    source.write_text(source.read_text() + f"\n{statement}  # noqa\n")

    result = lint_imports(tmp_path, pythonpath=tmp_path)

    output = flat(result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert f"{flat(contract_names()[contract])} BROKEN" in output
    assert f"{module} -> {statement.removeprefix('import ')}" in output, output


def test_the_serving_modules_load_no_torch_plots_or_ui() -> None:
    line = run_python(
        """
        import importlib, json, sys
        imported = []
        for name in sys.argv[1:-1]:
            importlib.import_module(name)
            imported.append(name)
        never = set(sys.argv[-1].split(","))
        print(json.dumps({"imported": imported, "loaded": sorted(never & set(sys.modules))}))
        """,
        *SERVING_MODULES,
        ",".join(NEVER_IN_SERVER),
    )
    report = json.loads(line)
    assert {"krt.server.app", "krt.synth.onnx_backend"} <= set(report["imported"])
    assert report["loaded"] == []


@pytest.mark.integration
def test_speaking_on_onnx_never_loads_torch(model_cache_dir: Path) -> None:
    line = run_python(
        """
        import json, sys
        from krt.config import load_config
        from krt.engine.pipeline import SpeechPipeline
        from krt.synth.loading import load_backend

        environ = {"KRT_BACKEND": "onnx", "KRT_CACHE_DIR": sys.argv[1], "KRT_CPU_THREADS": "2"}
        config = load_config(environ=environ, dotenv=None)
        pipeline = SpeechPipeline(load_backend(config), config)
        pcm = b"".join(pipeline.speak("Hello there."))
        never = set(sys.argv[2].split(","))
        print(json.dumps({"bytes": len(pcm), "loaded": sorted(never & set(sys.modules))}))
        """,
        str(model_cache_dir),
        ",".join(NEVER_IN_SERVER),
    )
    report = json.loads(line)
    assert report["bytes"] > 0
    assert report["loaded"] == []


def test_the_console_loads_neither_trio_nor_the_engine() -> None:
    line = run_python(
        """
        import json, sys
        import console.app, console.feed
        from krt.__main__ import _command_in, build_parser
        build_parser(_command_in(["console"])).parse_args(["console"])  # what `krt console` loads
        never = {"trio", "trio_websocket", "krt.engine", "krt.server", "krt.synth", "torch", "onnxruntime"}
        print(json.dumps(sorted(never & set(sys.modules))))
        """
    )
    assert json.loads(line) == []
