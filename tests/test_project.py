"""Project files stay in step: dependencies declared once (pyproject.toml) and covering every import, the
packages the wheel holds, CI <-> README."""
from __future__ import annotations

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from fpdm_core import assets

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    m = NAME.match(line)
    assert m, f"cannot parse requirement {line!r}"
    return canonical(m.group(1))


def install_lines(text: str) -> list[str]:
    """Lines of a requirements file without comments and blank lines."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def self_extras(requirements: list[str]) -> set[str]:
    """Extras of this project named by `fpdm-core[a,b]` entries."""
    pattern = re.compile(rf"^{re.escape(PROJECT['name'])}\[([^\]]+)\]$")
    return {e.strip() for r in requirements if (m := pattern.match(r.replace(" ", ""))) for e in m.group(1).split(",")}


def test_pyproject_declares_the_library_and_the_extras_each_package_once():
    core = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert {"torch", "numpy", "safetensors"} <= core
    assert {"app", "notebooks", "latents", "dev"} <= set(EXTRAS)
    for extra, requirements in EXTRAS.items():
        names = [requirement_name(r) for r in requirements if not self_extras([r])]
        assert len(names) == len(set(names)) and not set(names) & core, f"[{extra}] repeats a dependency"
    assert self_extras(EXTRAS["dev"]) == set(EXTRAS) - {"dev"}, "[dev] should pull in every other extra"


def test_requirements_txt_and_environment_yml_install_from_the_extras():
    assert install_lines((ROOT / "requirements.txt").read_text()) == ["-e .[dev]"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = [d["pip"] for d in env if isinstance(d, dict)]
    assert pip == [["-e .[dev]"]], "environment.yml's pip section should only install the kit with its [dev] extra"
    assert sorted(str(d).split("=")[0] for d in env if not isinstance(d, dict)) == ["pip", "python"]


def test_setup_sh_installs_from_the_extras():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    chosen = re.findall(r"\bEXTRAS=([\w,]+)", text)
    assert chosen and all(set(c.split(",")) <= set(EXTRAS) for c in chosen), chosen
    assert 'pip install -q -e ".[$EXTRAS]"' in text and "requirements.txt" not in text


def test_pyproject_packages_are_every_package_of_the_kit():
    """The wheel holds every package under fpdm_core, and the shipped files as the package data of
    `assets.PACKAGE` (tests/test_install.py builds and installs it)."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fpdm_core").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {assets.PACKAGE}
    assert ROOT / setuptools["package-dir"][assets.PACKAGE] == assets.CHECKOUT_DIR
    assert all((assets.CHECKOUT_DIR / name).is_file() for name in assets.NAMES.values())


# ----------------------------------------------------------------------------- imports vs declared dependencies
def imported_modules(source: str, *, module_level_only: bool = False) -> set[str]:
    """Top-level names of the absolute imports in `source` (only those run at import time if module_level_only)."""
    found = set()

    def visit(node):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
        if not (module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(ast.parse(source))
    return found - set(sys.stdlib_module_names)


def notebook_source(path: Path) -> str:
    """The code cells of a notebook, IPython magics and shell lines left out."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [line for c in cells for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def sources() -> dict[Path, str]:
    files = [*(ROOT / "fpdm_core").rglob("*.py"), *(ROOT / "app").glob("*.py"), *(ROOT / "scripts").glob("*.py"),
             *(ROOT / "tests").glob("*.py")]
    return {p: p.read_text() for p in files} | {p: notebook_source(p) for p in (ROOT / "notebooks").glob("*.ipynb")}


def undeclared(modules: set[str], declared: set[str]) -> set[str]:
    """Modules whose installed distribution (any of them, for namespace packages) is not in `declared`."""
    local = {"fpdm_core"} | {p.stem for folder in ("app", "scripts", "tests") for p in (ROOT / folder).glob("*.py")}
    dists = packages_distributions()
    missing = set()
    for module in modules - local:
        assert module in dists, f"{module} is imported but not installed: `bash scripts/setup.sh --dev`"
        if not {canonical(d) for d in dists[module]} & declared:
            missing.add(f"{module} ({', '.join(sorted(set(dists[module])))})")
    return missing


def test_every_import_is_a_declared_dependency():
    """The library's import-time imports are `dependencies`; any other import (inside functions, in the app,
    notebooks, scripts and tests) is in `dependencies` or an extra."""
    core = {requirement_name(r) for r in PROJECT["dependencies"]}
    every = core | {requirement_name(r) for reqs in EXTRAS.values() for r in reqs}
    library = set().union(*(imported_modules(s, module_level_only=True)
                            for p, s in sources().items() if p.is_relative_to(ROOT / "fpdm_core")))
    anywhere = set().union(*(imported_modules(s) for s in sources().values()))
    assert not undeclared(library, core), f"imported when fpdm_core is, but not in pyproject's dependencies: " \
        f"{sorted(undeclared(library, core))}"
    assert not undeclared(anywhere, every), f"imported but declared nowhere in pyproject: " \
        f"{sorted(undeclared(anywhere, every))}"


def test_the_import_scan_sees_function_level_imports_and_skips_the_standard_library():
    source = "import os, numpy.linalg\nfrom torch import nn\nfrom . import cli\ndef f():\n    import gradio\n"
    assert imported_modules(source) == {"numpy", "torch", "gradio"}
    assert imported_modules(source, module_level_only=True) == {"numpy", "torch"}
    assert undeclared({"numpy", "fpdm_core"}, {"numpy"}) == set()
    assert undeclared({"yaml"}, {"numpy"}) == {"yaml (PyYAML)"}


def pytest_command_lines(text: str) -> list[str]:
    """Lines mentioning pytest, with shell prompts and comments stripped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s*", "", line).split(" #", 1)[0].strip()
        if re.search(r"\bpytest\b", line) and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def fenced_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)


def test_ci_runs_the_same_test_command_as_the_readme():
    ci = pytest_command_lines((ROOT / ".ci" / "run").read_text())
    assert len(ci) == 1, f".ci/run should run pytest exactly once, found {ci}"
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing: it should show the test command that .ci/run runs"
    documented = [cmd for block in fenced_blocks(readme.read_text()) for cmd in pytest_command_lines(block)]
    assert documented, "README.md has no fenced command that runs pytest"
    assert ci[0] in documented, f".ci/run runs {ci[0]!r} but README.md documents {documented}"


def test_ci_script_is_strict_and_executable():
    text = (ROOT / ".ci" / "run").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run is not executable"


def test_pytest_command_parser_strips_prompts_and_comments():
    text = "$ python3 -m pytest  -q   # quick\n# pytest in a comment\npip install x\n"
    assert pytest_command_lines(text) == ["python3 -m pytest -q"]
    assert fenced_blocks("a\n```bash\nx && python3 -m pytest\n```\nb\n") == ["x && python3 -m pytest\n"]


def test_readme_findings_are_the_committed_benchmark_results():
    from fpdm_core.bench import BENCHMARKS, readme

    text = (ROOT / "README.md").read_text()
    expected = readme.block(ROOT / "figures", BENCHMARKS)
    assert expected in text, "README's findings block is stale: run `python -m fpdm_core.bench report`"


def test_ruff_finds_nothing():
    """`ruff check` (rules in pyproject.toml: pyflakes and syntax errors) over the whole tree, notebooks included."""
    import subprocess
    import sys

    pytest.importorskip("ruff", reason="ruff is in the [dev] extra: `bash scripts/setup.sh --dev`")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
