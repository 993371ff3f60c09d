#!/usr/bin/env bash
# Set up the FPDM kit on a fresh machine: system packages (where apt and root exist),
# torch (kept if present; else the CPU build pinned in TORCH_SPEC), then the kit with the extras
# declared in pyproject.toml (the one list of dependencies).
#   bash scripts/setup.sh          # to use the kit: the library, the app and the notebooks ([app,notebooks])
#   bash scripts/setup.sh --dev    # also the latents and test tools ([dev]) and Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.*}

if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  pkgs=()
  [[ -d /usr/share/datasets/fashion-mnist ]] || pkgs+=(dataset-fashion-mnist)
  [[ $DEV == 1 && ! -x /usr/bin/chromium ]] && pkgs+=(chromium)
  if (( ${#pkgs[@]} )); then
    echo "[setup] apt-get install ${pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
      || echo "[setup] warning: apt could not install ${pkgs[*]} (the tests that need them will skip)"
  fi
else
  echo "[setup] no apt or not root: get Fashion-MNIST yourself (see README) if you want to train on it"
fi

if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] pip install $TORCH_SPEC (GPU users: install your CUDA build of torch first, see README)"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
EXTRAS=app,notebooks; [[ $DEV == 1 ]] && EXTRAS=dev

# Exit 0 when this checkout is already installed editable and every requirement of pyproject.toml's
# dependencies and the extras $1 (self-references like fpdm-core[app] followed) is met: pip has nothing to do.
# -P keeps the current folder off sys.path: a build's *.egg-info there would shadow the installed metadata.
installed() {
  "$PY" -P - "$1" <<'PY' 2>/dev/null
import json, sys, tomllib
from importlib.metadata import distribution, version
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
url = json.loads(distribution(project["name"]).read_text("direct_url.json") or "{}")
assert url.get("dir_info", {}).get("editable") and url["url"] == Path.cwd().resolve().as_uri()
assert version(project["name"]) == project["version"]
todo, seen = [*project["dependencies"], *(f"{project['name']}[{e}]" for e in sys.argv[1].split(","))], set()
while todo:
    req = Requirement(todo.pop())
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name == project["name"]:
        todo += [r for e in req.extras - seen for r in project["optional-dependencies"][e]]
        seen |= req.extras
    else:
        assert req.specifier.contains(version(req.name), prereleases=True), req
PY
}

if installed "$EXTRAS"; then
  echo "[setup] fpdm-core[$EXTRAS] is installed from this checkout with every requirement met"
else
  echo "[setup] pip install -e .[$EXTRAS]"
  "$PY" -m pip install -q -e ".[$EXTRAS]"
fi
echo "[setup] done"
