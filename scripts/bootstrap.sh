#!/usr/bin/env bash
# Make a working environment on a fresh machine: .venv with PyTorch, nas_prune and the Fashion-MNIST data.
#   bash scripts/bootstrap.sh          # run-time dependencies
#   bash scripts/bootstrap.sh --test   # plus pytest, ruff and the ONNX export stack
# Safe to re-run: finished steps are skipped. An existing torch (e.g. a CUDA build) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test,onnx]"

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU wheel on this kind of machine; elsewhere pick a CUDA wheel from pytorch.org first.
  python -m pip install -q "torch==2.13.0"
fi
# setuptools prints a long editable-install notice on success; show pip's output only on failure.
log=$(mktemp)
python -m pip install -q -e ".${extras}" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
rm -f "$log"

data=/usr/share/datasets/fashion-mnist
have_data() { [ -e "$data/train-images-idx3-ubyte.gz" ] || [ -e "$data/train-images-idx3-ubyte" ]; }
if ! have_data && command -v apt-get >/dev/null; then
  apt="apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist"
  if [ "$(id -u)" = 0 ]; then sh -c "$apt"; else sudo -n sh -c "$apt"; fi >/dev/null 2>&1 </dev/null || true
fi
if have_data; then
  echo "bootstrap: Fashion-MNIST is in $data"
else
  echo "bootstrap: Fashion-MNIST not installed; the loader downloads it into ./data on first use (or use --data-dir)"
fi
echo "bootstrap: ready ($(python -c 'import torch; print("torch", torch.__version__)'))"
