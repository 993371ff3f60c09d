#!/usr/bin/env python
"""Execute the notebooks in notebooks/ with papermill; check their numbers; optionally refresh tracked figures.

    python scripts/run_notebooks.py                       # stored defaults (2-core CPU, about a minute each) into notebooks/outputs/run
    python scripts/run_notebooks.py --check-reference     # ... and compare results with notebooks/reference.json
    python scripts/run_notebooks.py --update-figures      # ... and write the figures into figures/notebooks/ (tracked)
    python scripts/run_notebooks.py --profile gpu         # a real run on one GPU (notebooks/profiles.yaml)
    python scripts/run_notebooks.py --only 02 -p steps 200 -p device cuda

Parameters, later layers winning: the profile in notebooks/profiles.yaml, then --params-file,
then -p NAME VALUE (VALUE is read as YAML: 3, 1e-3, null, "[1, 2]"). In the YAML files, keys
under `all` go to every notebook that declares that parameter, keys under a notebook's name
(e.g. `02_training`) to that notebook only; on the command line `-p 02_training.steps 100`
targets one notebook. Relative paths given by you are taken from the current directory.

Every notebook gets `out_dir = OUT/<name>` (it writes `results.json` there) and `figures_dir`:
OUT/figures by default (untracked, so running twice leaves `git status` clean), figures/notebooks
with --update-figures, or --figures-dir. The executed notebooks go to OUT/<name>.ipynb;
OUT/results.json collects every notebook's results.json (deterministic: two runs with the same
parameters on the same machine give identical files) and OUT/run.json the parameters, status and
wall time of each notebook. Measured timings stay in OUT/<name>/timings.json.

--check-reference compares each results.json with the committed reference numbers in
notebooks/reference.json (each with its tolerance; made for the stored defaults on a CPU) and
fails on any mismatch. --update-reference rewrites the reference values from this run, keeping
keys and tolerances. --store-checked-outputs copies the outputs of the cells marked
`# NBVAL_CHECK_OUTPUT` into the committed notebooks (what `pytest --nbval-lax notebooks/` checks).
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
REFERENCE = NOTEBOOKS / "reference.json"
TRACKED_FIGURES = REPO / "figures" / "notebooks"
DEFAULT_OUT = NOTEBOOKS / "outputs" / "run"
KERNEL = "python3"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


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


def check_reference(results: dict[str, dict], reference: dict[str, dict]) -> list[str]:
    """Mismatches of every executed notebook's results against its reference entries (empty: all match)."""
    from fpdm_core.tutorial import check_reference as check

    return [f"{stem}: {line}" for stem, ref in reference.items() if stem in results for line in check(results[stem], ref)]  # "_about" is never a notebook


def update_reference(results: dict[str, dict], reference: dict[str, dict]) -> dict[str, dict]:
    """The reference with every value taken from `results` (same keys, same tolerances)."""
    from fpdm_core.tutorial import flatten

    out = {}
    for stem, ref in reference.items():
        if stem.startswith("_"):  # notes about the file
            out[stem] = ref
            continue
        flat = flatten(results.get(stem, {}))
        out[stem] = {key: {**entry, "value": flat.get(key, entry["value"])} for key, entry in ref.items()}
    return out


def store_checked_outputs(executed: Path, committed: Path) -> int:
    """Copy the stream outputs of the `# NBVAL_CHECK_OUTPUT` cells from an executed notebook into the committed one
    (cells matched by id); every other cell stays without outputs. Returns the number of cells stored."""
    import nbformat

    run, nb = nbformat.read(executed, as_version=4), nbformat.read(committed, as_version=4)
    ran = {c.get("id"): c for c in run.cells if c.cell_type == "code"}
    stored = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        checked = cell.source.lstrip().startswith(CHECK_MARK) and cell.get("id") in ran
        # nbval compares a cell only if it has an execution count ("unrun" cells must have no outputs)
        cell.execution_count = ran[cell.get("id")].execution_count if checked else None
        cell.outputs = [o for o in ran[cell.get("id")].outputs if o.output_type == "stream"] if checked else []
        stored += checked
    nbformat.write(nb, committed)
    return stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="default", help=f"parameter profile in {PROFILES.relative_to(REPO)}")
    p.add_argument("--params-file", default=None, help="YAML file of parameters (same layout as a profile)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="one parameter (NAME or NOTEBOOK.NAME), VALUE read as YAML; repeatable")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for executed notebooks, results and (by default) figures")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--figures-dir", default=None, help="where notebooks save their figures (default: OUT/figures)")
    where.add_argument("--update-figures", action="store_true",
                       help=f"save the figures into {TRACKED_FIGURES.relative_to(REPO)} (tracked in git)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only notebooks starting with these (e.g. 01 03)")
    p.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: no limit)")
    p.add_argument("--check-reference", action="store_true", help=f"fail unless results match {REFERENCE.relative_to(REPO)}")
    p.add_argument("--update-reference", action="store_true", help=f"rewrite the values in {REFERENCE.relative_to(REPO)}")
    p.add_argument("--store-checked-outputs", action="store_true",
                   help=f"copy the outputs of `{CHECK_MARK}` cells into the committed notebooks (stored defaults only)")
    p.add_argument("--dry-run", action="store_true", help="print the parameters each notebook would get, run nothing")
    a = p.parse_args(argv)

    if (a.update_reference or a.store_checked_outputs) and (a.profile != "default" or a.params_file or
                                                            any(name.rpartition(".")[2] != "device" for name, _ in a.parameter)):
        raise SystemExit("error: --update-reference and --store-checked-outputs record the stored defaults: "
                         "use no --profile, --params-file or -p (except -p device cpu)")
    out = Path(a.out).resolve()
    figures_dir = TRACKED_FIGURES if a.update_figures else Path(a.figures_dir).resolve() if a.figures_dir else out / "figures"
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
    if failed:
        return 1
    reference = json.loads(REFERENCE.read_text()) if a.check_reference or a.update_reference else {}
    if a.update_reference:
        REFERENCE.write_text(json.dumps(update_reference(results, reference), indent=2, sort_keys=True) + "\n")
        print(f"[notebooks] updated the values in {REFERENCE}")
    if a.store_checked_outputs:
        for path in notebooks:
            print(f"[notebooks] {path.name}: stored the outputs of {store_checked_outputs(out / path.name, path)} checked cells")
    if a.check_reference:
        mismatches = check_reference(results, reference)
        for line in mismatches:
            print(f"[notebooks] REFERENCE MISMATCH {line}", flush=True)
        print(f"[notebooks] reference check: {'FAILED' if mismatches else 'ok'} ({REFERENCE.relative_to(REPO)})")
        return 1 if mismatches else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
