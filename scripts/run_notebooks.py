#!/usr/bin/env python
"""Execute the notebooks in notebooks/ with papermill and regenerate their figures.

    python scripts/run_notebooks.py                       # stored defaults: a 2-core CPU, about a minute each
    python scripts/run_notebooks.py --profile full        # a real run on one GPU (notebooks/profiles.yaml)
    python scripts/run_notebooks.py --only 02 -p steps 200 -p device cuda
    python scripts/run_notebooks.py --params-file my.yaml --out /tmp/executed --figures-dir /tmp/figures

Parameters, later layers winning: the profile in notebooks/profiles.yaml, then --params-file,
then -p NAME VALUE (VALUE is read as YAML: 3, 1e-3, null, "[1, 2]"). In the YAML files, keys
under `all` go to every notebook that declares that parameter, keys under a notebook's name
(e.g. `02_training`) to that notebook only; on the command line `-p 02_training.steps 100`
targets one notebook. Relative paths given by you are taken from the current directory.

Every notebook gets `out_dir = OUT/<name>` (it writes `results.json` there) and
`figures_dir = --figures-dir` (default figures/notebooks). The executed notebooks go to
OUT/<name>.ipynb; OUT/results.json collects every notebook's results.json (deterministic:
two runs with the same parameters on the same machine give identical files) and
OUT/run.json the parameters, status and wall time of each notebook.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PROFILES = NOTEBOOKS / "profiles.yaml"
KERNEL = "python3"


def is_path_param(name: str) -> bool:
    """Parameters holding a file or folder (resolved to absolute paths before injection)."""
    return name.endswith("_dir") or name.endswith("checkpoint")


def find_notebooks(only: list[str] | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` keeps those whose name starts with one of the given prefixes."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) or p.name == o for o in only)]
        if not found:
            raise SystemExit(f"error: --only {' '.join(only)} matches no notebook in {NOTEBOOKS}")
    return found


def declared_parameters(path: Path) -> dict:
    """{name: default value} of the notebook's one cell tagged `parameters` (None where a default is not a literal)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"error: {path.name} has {len(cells)} cells tagged 'parameters', expected exactly one")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = None
    return out


def _layer(data, source: str) -> dict[str, dict]:
    """A YAML mapping -> {"all": {...}, "<notebook>": {...}}; top-level scalars count as `all`."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SystemExit(f"error: {source} must be a mapping of parameters, got {type(data).__name__}")
    out: dict[str, dict] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.setdefault(str(key), {}).update(value)
        else:
            out.setdefault("all", {})[str(key)] = value
    return out


def _from_cwd(value):
    """A path given by the user, relative to the current directory, as an absolute string."""
    return str(Path(value).expanduser().resolve()) if isinstance(value, str) and value else value


def parameter_layers(profile: str, params_file: str | None, cli: list[list[str]]) -> list[dict[str, dict]]:
    profiles = yaml.safe_load(PROFILES.read_text()) or {}
    if profile not in profiles:
        raise SystemExit(f"error: unknown profile {profile!r}; {PROFILES.name} has {', '.join(profiles)}")
    layers = [_layer(profiles[profile], f"profile {profile!r}")]
    if params_file:
        layer = _layer(yaml.safe_load(Path(params_file).read_text()), params_file)
        layers.append({nb: {k: _from_cwd(v) if is_path_param(k) else v for k, v in p.items()} for nb, p in layer.items()})
    cli_layer: dict[str, dict] = {}
    for name, raw in cli:
        target, _, key = name.rpartition(".")
        value = yaml.safe_load(raw)
        cli_layer.setdefault(target or "all", {})[key] = _from_cwd(value) if is_path_param(key) else value
    layers.append(cli_layer)
    return layers


def plan(notebooks: list[Path], layers: list[dict[str, dict]], out: Path, figures_dir: Path) -> dict[str, dict]:
    """The parameters each notebook will get (only those it declares)."""
    plans, used = {}, set()
    for path in notebooks:
        declared = declared_parameters(path)
        params = {}
        for name, default in declared.items():  # relative default paths are relative to notebooks/
            if is_path_param(name) and isinstance(default, str) and default:
                params[name] = str((NOTEBOOKS / default).resolve())
        for layer in layers:
            for scope in ("all", path.stem):
                for name, value in layer.get(scope, {}).items():
                    if name in declared:
                        params[name] = value
                        used.add((scope, name))
        params["out_dir"] = str(out / path.stem)
        params["figures_dir"] = str(figures_dir)
        missing = {"out_dir", "figures_dir"} - set(declared)
        if missing:
            raise SystemExit(f"error: {path.name} declares no {', '.join(sorted(missing))} parameter")
        plans[path.stem] = params
    selected, every = {p.stem for p in notebooks}, {p.stem for p in find_notebooks()}
    for layer in layers[1:]:  # what you typed must be used: a misspelt name must not pass silently
        for scope, params in layer.items():
            if scope != "all" and scope not in every:
                raise SystemExit(f"error: no notebook {scope!r}; notebooks: {', '.join(sorted(every))}")
            if scope != "all" and scope not in selected:
                continue
            for name in params:
                if (scope, name) not in used:
                    raise SystemExit(f"error: parameter {name!r} is declared by no selected notebook"
                                     + ("" if scope == "all" else f" ({scope})"))
    return plans


def execute(path: Path, params: dict, out: Path, timeout: int | None) -> tuple[bool, float, str]:
    import papermill

    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(path), str(out / path.name), parameters=params, kernel_name=KERNEL,
                                   cwd=str(NOTEBOOKS), progress_bar=False, execution_timeout=timeout)
    except papermill.PapermillExecutionError as e:
        return False, time.perf_counter() - start, f"{e.ename}: {e.evalue}"
    return True, time.perf_counter() - start, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="default", help=f"parameter profile in {PROFILES.relative_to(REPO)}")
    p.add_argument("--params-file", default=None, help="YAML file of parameters (same layout as a profile)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="one parameter (NAME or NOTEBOOK.NAME), VALUE read as YAML; repeatable")
    p.add_argument("--out", default=str(NOTEBOOKS / "executed"), help="folder for executed notebooks and results")
    p.add_argument("--figures-dir", default=str(REPO / "figures" / "notebooks"), help="where notebooks save their figures")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only notebooks starting with these (e.g. 01 03)")
    p.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: no limit)")
    p.add_argument("--dry-run", action="store_true", help="print the parameters each notebook would get, run nothing")
    a = p.parse_args(argv)

    out, figures_dir = Path(a.out).resolve(), Path(a.figures_dir).resolve()
    notebooks = find_notebooks(a.only)
    plans = plan(notebooks, parameter_layers(a.profile, a.params_file, a.parameter), out, figures_dir)
    if a.dry_run:
        print(json.dumps(plans, indent=2))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    log, results = {}, {}
    for path in notebooks:
        print(f"[notebooks] {path.name} ...", flush=True)
        ok, seconds, error = execute(path, plans[path.stem], out, a.timeout)
        log[path.stem] = {"ok": ok, "seconds": round(seconds, 1), "error": error, "parameters": plans[path.stem]}
        result_file = out / path.stem / "results.json"
        if ok and result_file.is_file():
            results[path.stem] = json.loads(result_file.read_text())
        print(f"[notebooks] {path.name}: {'ok' if ok else 'FAILED: ' + error} ({seconds:.1f} s)", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "run.json").write_text(json.dumps({"profile": a.profile, "notebooks": log}, indent=2) + "\n")
    failed = [name for name, entry in log.items() if not entry["ok"]]
    print(f"[notebooks] {len(log) - len(failed)}/{len(log)} ok; executed notebooks and results.json in {out}; "
          f"figures in {figures_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
