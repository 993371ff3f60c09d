#!/usr/bin/env bash
# Set up the FPDM kit on a fresh machine: system packages (where apt and root exist),
# torch (kept if present; else the CPU build pinned in TORCH_SPEC), then the kit and its requirements.
#   bash scripts/setup.sh          # to use the kit
#   bash scripts/setup.sh --dev    # also Chromium for the browser tests
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
"$PY" -m pip install -q -e . -r requirements.txt
echo "[setup] done"
