#!/usr/bin/env bash
# Fill scripts/gpu_wheels/ with the wheels kdnas needs on a GPU image that has PyTorch, timm, safetensors,
# onnx, matplotlib and scipy but not hydra-core/omegaconf/pytest/the launchers. scripts/gpu_check.sh installs
# the missing ones from this folder, offline (the GPU machine reaches no index).
#
#   bash scripts/gpu_wheels.sh            # here, with PyPI reachable; then carry scripts/gpu_wheels/ along
#
# Pure-python wheels work on any CPython; PyYAML (the one binary dependency, usually already there through
# timm) is fetched for CPython 3.10-3.13 on x86_64 Linux. wandb is not fetched: kdnas imports it only for
# logger=wandb, which gpu_check.sh does not use. torch is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=scripts/gpu_wheels
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

# Versions: those of this checkout's tested environment (.venv) where present, so the GPU run tests the same code.
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime tqdm pytest pytest-timeout pluggy iniconfig packaging
          submitit cloudpickle joblib typing-extensions hydra-submitit-launcher hydra-joblib-launcher
          exceptiongroup tomli PyYAML setuptools wheel)
pins=()
for p in "${PACKAGES[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$p")
  pins+=("$p${v:+==$v}")
done
echo "pins: ${pins[*]}"

# antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as an sdist only: build its pure wheel here.
antlr=$(printf '%s\n' "${pins[@]}" | grep '^antlr4-python3-runtime')
"$PY" -m pip wheel --no-deps --quiet -w "$OUT" "$antlr"

# Everything else as wheels, with their dependencies, for each CPython an image may ship.
others=()
for p in "${pins[@]}"; do [[ $p == antlr4-python3-runtime* ]] || others+=("$p"); done
for pyver in 3.10 3.11 3.12 3.13; do
  "$PY" -m pip download --quiet --dest "$OUT" --find-links "$OUT" --only-binary=:all: \
    --implementation cp --python-version "$pyver" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "${others[@]}" || { echo "pip download failed for CPython $pyver" >&2; exit 1; }
done
ls -1 "$OUT"
du -sh "$OUT"
