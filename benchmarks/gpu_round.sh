#!/usr/bin/env bash
# One short round of GPU measurements and GPU tests, for a CUDA machine lent for minutes: python3 with
# PyTorch, no package index, the checkout copied over. What it lacks comes as wheels in .whl/
# (benchmarks/gpu_wheels.sh, run where pip works); nothing is installed outside a folder in /tmp.
#
#   benchmarks/gpu_round.sh PART [OUTDIR]
#
#   compiled-fp16  B+ 1024, batch 1 and 8: eager and torch.compile with CUDA graphs (reduce-overhead) in fp16,
#                  beside the eager FP32 baseline, each with its held-out accuracy (two compiles)
#   compiled-fp32  the same in fp32 (TF32 off)
#   aoti           the fp16 .pt2 (AOTInductor), exported and compiled for this GPU, beside eager
#   pixel          file -> matte with the uint8 pixel input against float32 input, .pt2 packages in fp16 (tiny
#                  at S: the request's bytes and the host's work depend on S alone; two small compiles)
#   tests          the tests marked gpu (they skip without a CUDA GPU)
#
# Parts chain in one call, most wanted first, with ; (a matrix exits 1 when a row misses its tolerance): each
# writes its log (the machine's facts first) and the matrix's JSON, summary and chart into OUTDIR (default
# $OUT, else benchmarks/results/gpu-round); a part killed at a time limit still leaves its log, one line per
# finished row. MGD_RT_ROUND_COMPILE (eager,reduce-overhead) sets the compiled parts' modes (max-autotune:
# slower to compile, CUDA graphs too). MGD_RT_ROUND_DEVICE, MGD_RT_ROUND_VARIANT and MGD_RT_ROUND_SIZE (cuda,
# b+, 1024) let the same round run small on a CPU to check it.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: benchmarks/gpu_round.sh compiled-fp16|compiled-fp32|aoti|pixel|tests [OUTDIR]}
out=${2:-${OUT:-benchmarks/results/gpu-round}}
device=${MGD_RT_ROUND_DEVICE:-cuda}
variant=${MGD_RT_ROUND_VARIANT:-b+}
size=${MGD_RT_ROUND_SIZE:-1024}
mkdir -p "$out"
site=/tmp/mgd-rt-site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_round: could not install the wheels in .whl/" >&2; exit 2; }
  export PYTHONPATH="$site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
log="$out/$part.log"
python3 - "$device" <<'PY' 2>&1 | tee "$log"
import importlib.metadata as md
import subprocess
import sys

import torch

import mgd_rt
import sam2  # noqa: F401 - fails here, not minutes into the round, when a wheel is missing

print("python", sys.version.split()[0], "| torch", torch.__version__, "| sam2", md.version("sam2"),
      "| mgd-rt", mgd_rt.__version__)
if sys.argv[1].startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("gpu_round: torch sees no CUDA GPU")
    print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                    "--format=csv"], check=False)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2
matrix=(python3 benchmarks/run_matrix.py --device "$device" --variant "$variant" --image-size "$size" --seeds 0
        --workdir /tmp/mgd-rt-work --results "$out")
case "$part" in
  compiled-fp16|compiled-fp32)
    "${matrix[@]}" --name "$device-$part" --dtypes "${part#compiled-}" --no-aoti \
      --compile "${MGD_RT_ROUND_COMPILE:-eager,reduce-overhead}" ;;
  aoti)
    "${matrix[@]}" --name "$device-$part" --dtypes fp16 --compile eager ;;
  pixel)
    dtype=fp16; [ "$device" = cpu ] && dtype=fp32  # fp16 packages run on CUDA only
    python3 benchmarks/pixel_input.py --format pt2 --device "$device" --dtype "$dtype" --variant tiny \
      --image-size "$size" --output "$out/pixel_input-$device.json" ;;
  tests)
    # the files holding gpu-marked tests only: collecting the others imports what this machine may lack
    python3 -m pytest -q -rs -p no:cacheprovider -m gpu $(grep -l "needs_cuda\|mark\.gpu" tests/test_*.py) ;;
  *)
    echo "gpu_round: unknown part $part (compiled-fp16, compiled-fp32, aoti, pixel, tests)" >&2; exit 2 ;;
esac 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
