#!/usr/bin/env bash
# Wheels for a CUDA machine that has PyTorch but no package index (a lent or air-gapped GPU box), made
# where pip works: the packages mgd-rt's PyTorch, compile and .pt2 paths need beyond what such an image
# holds (PyTorch, numpy, Pillow, OpenCV, onnx, onnxscript, ONNX Runtime, safetensors, scikit-image, pytest).
#
#   benchmarks/gpu_wheels.sh [DIR]      # default .whl/ (git-ignored); then benchmarks/gpu_round.sh there
#
# Each is pinned to the version this environment runs (the one the tests passed with); sam2 is built
# without its CUDA extension, which mgd-rt never calls.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$dir"
pinned() {  # NAME -> NAME==VERSION installed in $python
  "$python" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"
}
# pip wheel takes a published wheel where there is one and builds the sdists (sam2, antlr4, iopath) into
# pure-Python wheels, so any CPython 3 on the GPU machine takes them; no build isolation: sam2's build
# imports torch, $python's
SAM2_BUILD_CUDA=0 "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" \
  "$(pinned sam2)" "$(pinned hydra-core)" "$(pinned omegaconf)" "$(pinned antlr4-python3-runtime)" \
  "$(pinned iopath)" "$(pinned onnxslim)" "$(pinned onnxconverter-common)"
ls -1 "$dir"
du -sh "$dir"
