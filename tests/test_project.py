"""Project files stay in step: environment.yml <-> requirements.txt <-> pyproject, CI <-> README."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines() -> list[str]:
    """requirements.txt without comments, blank lines and pip options (`-e .`, `-r ...`)."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def environment_pip_lines() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml should have exactly one pip: section"
    return [str(line).strip() for line in pip[0] if not str(line).strip().startswith("-")]


def specifiers(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = NAME.match(line)
        assert m, f"cannot parse requirement {line!r}"
        name = canonical(m.group(1))
        assert name not in out, f"{name} listed twice"
        out[name] = re.sub(r"\s+", "", line[m.end():])
    return out


def test_requirements_parse_and_include_the_core_libraries():
    names = specifiers(requirement_lines())
    assert {"torch", "numpy", "safetensors", "pytest", "hypothesis"} <= set(names)


def test_environment_yml_pip_list_equals_requirements_txt():
    env, req = environment_pip_lines(), requirement_lines()
    assert sorted(env) == sorted(req), (
        f"only in environment.yml: {sorted(set(env) - set(req))}; only in requirements.txt: {sorted(set(req) - set(env))}")
    assert len(env) == len(set(env))
    raw = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    assert "-e ." in next(d["pip"] for d in raw if isinstance(d, dict)), "environment.yml should install the kit itself"


def test_pyproject_dependencies_are_a_subset_of_requirements():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps, req = specifiers(project["dependencies"]), specifiers(requirement_lines())
    missing = sorted(set(deps) - set(req))
    assert not missing, f"pyproject dependencies missing from requirements.txt: {missing}"
    # and with the same version floors, so `pip install .` and `pip install -r` agree
    assert {n: deps[n] for n in deps} == {n: req[n] for n in deps}


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

    pytest.importorskip("ruff", reason="ruff is a dev requirement: `pip install -r requirements.txt`")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
