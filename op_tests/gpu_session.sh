#!/usr/bin/env bash
# Everything one lent-GPU call does for the ops so far, in one go (device time is scarce):
# the tests on their full grids (compiled Triton, the C++ kernels, bf16, graph capture), the benchmark
# beside FlashInfer, the tuner, and the gap matrix. Logs and the tuned CSV land in $OUT.
#   run from the repository root; carry .bench (the FlashInfer bundle from ../shared/tools/flashinfer-bundle)
set -uo pipefail
OUT=${OUT:-/tmp/aiter_ext_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 AITER_EXT_JIT_DIR=/tmp/aiter_ext_jit
if [ -f .bench/flashinfer-bundle.tar.xz ]; then
  mkdir -p /tmp/fi && tar xJf .bench/flashinfer-bundle.tar.xz -C /tmp/fi && export PYTHONPATH=$PYTHONPATH:/tmp/fi/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" || echo "FlashInfer unavailable"
echo "== tests (full grids)"
python3 -m pytest -q -p no:cacheprovider op_tests/test_merge_state.py op_tests/test_dispatch.py op_tests/test_jit.py \
  2>&1 | tee "$OUT/pytest.log" | tail -n 8
echo "== benchmark"
python3 op_tests/test_merge_state.py --graph "$@" 2>&1 | tee "$OUT/bench.log"
echo "== tuner"
python3 -m aiter_ext tune merge_state 2>&1 | tee "$OUT/tune.log" | tail -n 14
cp configs/tuned_csv/merge_state_tuned.csv "$OUT/" 2>/dev/null
echo "== gap"
python3 -m aiter_ext gap 2>&1 | tail -n 3
