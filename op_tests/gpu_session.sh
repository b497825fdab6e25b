#!/usr/bin/env bash
# One lent-GPU call for the ops so far (device time is scarce): the chosen sections, in order, each
# logging to $OUT. Run from the repository root; carry .bench (the FlashInfer bundle made by
# ../shared/tools/flashinfer-bundle).
#   bash op_tests/gpu_session.sh SECTION [SECTION...]
#   (no section: the list of sections; each is a `case` label below, with a comment saying what it runs)
# Inside a lent call, wrap it in a timeout shorter than the call's limit, so the logs under $OUT come back:
#   timeout 560 bash op_tests/gpu_session.sh objects > $OUT/console.log 2>&1
# Sections that one session strung together for one call were folded into the generic ones when their issue
# closed; docs/perf-notes.md names each call's tree, where `git show TREE:op_tests/gpu_session.sh` has them.
set -uo pipefail
if [ $# -eq 0 ]; then
  echo "usage: bash $0 SECTION [SECTION...]; sections:"
  sed -n 's/^    \([a-z0-9|-]*\)).*/  \1/p' "$0"
  exit 2
fi
OUT=${OUT:-/tmp/aiter_ext_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 AITER_EXT_JIT_DIR=/tmp/aiter_ext_jit
# unpacked once per machine, so that sections may run as parallel invocations after a first one
if [ -f .bench/flashinfer-bundle.tar.xz ] && [ ! -d /tmp/fi/site ]; then
  mkdir -p /tmp/fi && tar xJf .bench/flashinfer-bundle.tar.xz -C /tmp/fi
fi
[ -d /tmp/fi/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/fi/site
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" || echo "FlashInfer unavailable"
# An op's tune: $2 processes compile and check its candidates at once (each every $2-th shape), then one checks and
# times them all (SIGINT at its limit keeps the rows timed; the tuner merges them into the committed ones)
sharded_tune() {
  local op=$1 shards=$2 k
  for ((k = 0; k < shards; k++)); do
    timeout ${T_TUNE_CHECK:-300} python3 -m aiter_ext tune "$op" ${TUNE_ARGS:-} --check-only --shard $k/$shards \
      > "$OUT/tune-$op-check-$k.log" 2>&1 &
  done
  wait
  grep -h "REJECTED\|failed" "$OUT"/tune-$op-check-*.log | head -n 20
  timeout -s INT ${T_TUNE:-280} python3 -m aiter_ext tune "$op" ${TUNE_ARGS:-} 2>&1 | tee "$OUT/tune-$op.log" | tail -n 12
  cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
}
for section in "$@"; do
  echo "== $section"
  case $section in
    merge)
      python3 -m pytest -q -p no:cacheprovider op_tests/test_merge_state.py op_tests/test_dispatch.py \
        op_tests/test_jit.py 2>&1 | tee "$OUT/pytest-merge.log" | tail -n 8
      python3 op_tests/test_merge_state.py --graph 2>&1 | tee "$OUT/bench-merge.log"
      python3 -m aiter_ext tune merge_state 2>&1 | tee "$OUT/tune.log" | tail -n 14
      cp configs/tuned_csv/merge_state_tuned.csv "$OUT/" 2>/dev/null ;;
    attention-tests)
      python3 -m pytest -q -p no:cacheprovider op_tests/test_paged_kv.py op_tests/test_attention.py \
        op_tests/test_cascade.py op_tests/test_aiter_backend.py op_tests/test_attention_contract.py \
        op_tests/test_attention_sinks.py op_tests/test_attention_masks.py op_tests/test_bounds.py \
        op_tests/test_attention_compile.py 2>&1 \
        | tee "$OUT/pytest-attention.log" | tail -n 12 ;;
    attention-bench)  # the AMD compile tables come from CPU runs (--amd-table only), not device time
      python3 op_tests/test_cascade.py --amd-table no 2>&1 | tee "$OUT/bench-cascade.log"
      python3 op_tests/test_attention.py --amd-table no 2>&1 | tee "$OUT/bench-attention.log" ;;
    sweep)
      python3 op_tests/sweep_attention.py 2>&1 | tee "$OUT/sweep.log" ;;
    attention-compile)  # issue 14: torch.compile of every public attention call, CUDA graphs included
      python3 -m pytest -q -p no:cacheprovider op_tests/test_attention_compile.py 2>&1 \
        | tee "$OUT/pytest-attention-compile.log" | tail -n 12 ;;
    sparse)  # issue 16: block-sparse tests compiled (FlashInfer's grids) and the benchmark beside FlashInfer
      python3 -m pytest -q -p no:cacheprovider op_tests/test_attention_sparse.py 2>&1 | tee "$OUT/pytest-sparse.log" | tail -n 6
      python3 op_tests/bench_block_sparse.py 2>&1 | tee "$OUT/bench-sparse.log" ;;
    sparse-tests)  # issue 16: block-sparse and POD tests compiled (FlashInfer's grids, serving sizes)
      python3 -m pytest -q -p no:cacheprovider op_tests/test_attention_sparse.py op_tests/test_attention_pod.py 2>&1 \
        | tee "$OUT/pytest-sparse-pod.log" | tail -n 8 ;;
    sparse-bench)
      python3 op_tests/bench_block_sparse.py 2>&1 | tee "$OUT/bench-sparse.log" ;;
    pod-bench)  # issue 16: POD against our prefill-then-decode, FlashInfer's POD and BatchAttention
      python3 op_tests/bench_pod.py 2>&1 | tee "$OUT/bench-pod.log" ;;
    segment-tests)  # issue 17: segment GEMM and LoRA shrink/expand compiled, at real hidden sizes
      python3 -m pytest -q -p no:cacheprovider op_tests/test_segment_gemm.py 2>&1 | tee "$OUT/pytest-segment-gemm.log" \
        | tail -n 8 ;;
    segment-bench)
      python3 op_tests/bench_segment_gemm.py 2>&1 | tee "$OUT/bench-segment-gemm.log" ;;
    tune)  # fills configs/tuned_csv/<op>_tuned.csv for this GPU's arch, for each of TUNE_OPS ("op:shards" items, e.g.
      # "segment_gemm:8 attention:8 sampling:4 chain_speculative_sampling:2"): the checks in shards at once, then one
      # timed run per op (T_TUNE_CHECK, T_TUNE bound each step; TUNE_ARGS, e.g. "-i list.csv", go to every run)
      for item in ${TUNE_OPS:?TUNE_OPS=\"op:shards ...\" names the ops to tune}; do
        sharded_tune "${item%%:*}" "${item##*:}"
      done ;;
    thin-tests)  # issue 18: the thin launch path against Triton's launcher bit for bit, then op suites through it
      AITER_EXT_LAUNCH=thin timeout ${T_THIN:-300} python3 -m pytest -q -p no:cacheprovider op_tests/test_thin_launch.py \
        op_tests/test_merge_state.py op_tests/test_paged_kv.py op_tests/test_segment_gemm.py 2>&1 \
        | tee "$OUT/pytest-thin.log" | tail -n 12 ;;
    plans-tests)  # issue 18: call plans against the usual path bit for bit, then the ops that have plans, compiled
      timeout ${T_PLANS:-420} python3 -m pytest -q -p no:cacheprovider op_tests/test_plans.py op_tests/test_thin_launch.py \
        op_tests/test_norm.py op_tests/test_rope.py op_tests/test_merge_state.py 2>&1 \
        | tee "$OUT/pytest-plans.log" | tail -n 12 ;;
    sampling-thin)  # issue 18: the sampling suite through the thin path (no plans in sampling yet)
      AITER_EXT_LAUNCH=thin timeout ${T_SAMPLING:-420} python3 -m pytest -q -p no:cacheprovider op_tests/test_sampling.py 2>&1 \
        | tee "$OUT/pytest-sampling-thin.log" | tail -n 8 ;;
    tune-launch)  # issue 18: tuned rows for rmsnorm, RoPE and RMSNorm + FP4 on this GPU's arch
      for op in rmsnorm rope norm_fp4; do
        python3 -m aiter_ext tune $op 2>&1 | tee "$OUT/tune-$op.log" | tail -n 12
        cp configs/tuned_csv/${op}_tuned.csv "$OUT/" 2>/dev/null
      done ;;
    host-parts)  # issue 18: where each op's eager host time goes, beside FlashInfer (loops of 5000 calls)
      python3 op_tests/bench_host_parts.py 2>&1 | tee "$OUT/bench-host-parts.log" ;;
    objects)  # issue 18: the object check: each test file of OBJECT_SHARDS ("file:n" runs its n AITER_EXT_TEST_SHARD
      # shards, "file:n:k" only shard k) as one process a shard (the check's compiles are CPU-bound, one core each); every
      # launch gets a code object built for it on demand (sm_90 launches take NVIDIA tiles the AMD specs do not hold) and
      # is compared byte for byte with Triton's launch of the same kernel (core/object_check.py); counts per kernel last
      python3 -c "from aiter_ext.core import thin; thin.native()"  # the C extension built once, before the processes
      for spec in ${OBJECT_SHARDS:?OBJECT_SHARDS=\"test_file:shards ...\" names the suites}; do
        IFS=: read -r name shards only <<< "$spec"
        for ((k = 0; k < shards; k++)); do
          [ -z "$only" ] || [ "$k" = "$only" ] || continue
          AITER_EXT_TEST_SHARD=$k/$shards AITER_EXT_HSA_DIR=/tmp/hsa_objects \
            AITER_EXT_OBJECT_CHECK="$OUT/object-check-$name-$k.json" AITER_EXT_OBJECT_CHECK_BUILD=1 \
            timeout -s INT ${T_OBJECTS:-420} python3 -m pytest -q -p no:cacheprovider "op_tests/$name.py" \
            > "$OUT/pytest-objects-$name-$k.log" 2>&1 &
        done
      done
      wait
      for f in "$OUT"/pytest-objects-*.log; do echo "$f: $(tail -n 1 "$f")"; done
      grep -h "FAILED\|Error" "$OUT"/pytest-objects-*.log | head -n 20
      python3 - "$OUT" <<'PY'
import collections, glob, json, sys
totals = collections.Counter()
for path in glob.glob(f"{sys.argv[1]}/object-check-*.json"):
    for kernel, counts in json.load(open(path)).get("object_check", {}).items():
        for key, value in (counts.items() if isinstance(counts, dict) else ()):
            if isinstance(value, (int, float)):
                totals[(kernel, key)] += value
for (kernel, key), value in sorted(totals.items()):
    print(f"{kernel} {key} {value}")
PY
      ;;
    sampling-tuned-bench)  # issue 18: each tuned sampling row beside the policy and FlashInfer (eager, graph, host)
      timeout -s INT ${T_BENCH:-240} python3 op_tests/bench_sampling_tuned.py 2>&1 | tee "$OUT/bench-sampling-tuned.log" ;;
    lazy-check)  # issue 18: Triton's deferred import (core/lazy_triton.py): its tests and the launch path's, the norm and
      # merge_state suites compiled (every kernel made real by load()), then the cold starts on a quiet machine
      timeout ${T_LAZY:-220} python3 -m pytest -q -p no:cacheprovider op_tests/test_lazy_triton.py op_tests/test_thin_launch.py \
        op_tests/test_plans.py op_tests/test_norm.py op_tests/test_merge_state.py 2>&1 | tee "$OUT/pytest-lazy.log" | tail -n 8
      bash "$0" cold-start ;;
    cold-start)  # issue 18: first calls in fresh processes, from code objects against a Triton compile
      python3 op_tests/bench_cold_start.py --profile 2>&1 | tee "$OUT/bench-cold-start.log" ;;
    launch-bench)  # issue 18: eager host time, thin path against Triton's launcher and FlashInfer
      python3 op_tests/bench_launch.py 2>&1 | tee "$OUT/bench-launch.log" ;;
    cascade-decision)  # issue 15: cascade against plain decode at vLLM-like batches (the plugins' choice)
      python3 op_tests/test_cascade.py --amd-table no --decision 2>&1 | tee "$OUT/bench-cascade-decision.log" ;;
    attention-variants)  # issue 14: what sinks, masks, ALiBi and RoPE cost; multi-token decode beside FlashInfer
      python3 op_tests/bench_attention_variants.py 2>&1 | tee "$OUT/bench-attention-variants.log" ;;
    fi-warm)  # FlashInfer's JIT builds for the benchmarks (run it in the background beside the tests);
      # FI_WARM picks the families (op_tests/flashinfer_warm.py), each in its own process so the builds overlap
      for family in ${FI_WARM:-sampling attention}; do
        python3 op_tests/flashinfer_warm.py $family > "$OUT/fi-warm-$family.log" 2>&1 &
      done
      wait
      tail -n 2 "$OUT"/fi-warm-*.log ;;
    sampling-tests)  # the split kernel's tests are bounded here too (a barrier that never opens would hang)
      timeout ${T_TESTS:-600} python3 -m pytest -q -p no:cacheprovider --durations=10 op_tests/test_sampling.py 2>&1 \
        | tee "$OUT/pytest-sampling.log" | tail -n 24 ;;
    sampling-exclusion)  # issue 12: 5M draws per case, no excluded token (vocabulary 128256 cases are the slow ones:
      # every draw of the row kernel scans half a row; AITER_EXT_EXCLUSION_DRAWS lowers the count for a first look).
      # The split kernel's cases are in sampling-split.
      timeout ${T_EXCL_ROWS:-600} python3 -m pytest -v -p no:cacheprovider --durations=12 \
        op_tests/test_sampling_exclusion.py -k "not split_kernel" 2>&1 \
        | tee "$OUT/pytest-sampling-exclusion.log" | grep -Ev "PASSED|SKIPPED" | tail -n 40 ;;
    sampling-split)  # the split kernel (small batch): frequencies, agreement with the row kernel, edges, 5M-draw
      # exclusion. A barrier that never opens would hang: each pytest is bounded.
      timeout ${T_SPLIT:-140} python3 -m pytest -v -p no:cacheprovider --durations=8 op_tests/test_sampling.py -k split 2>&1 \
        | tee "$OUT/pytest-sampling-split.log" | tail -n 14
      timeout ${T_EXCL:-200} python3 -m pytest -v -p no:cacheprovider --durations=8 op_tests/test_sampling_exclusion.py \
        -k split_kernel 2>&1 | tee "$OUT/pytest-sampling-split-exclusion.log" | tail -n 14 ;;
    sampling-rounds)  # issue 12: the rounds path (rounds_kernels.py, taken only when asked): its tests, its 5M-draw
      # exclusion, and the sweep beside the default route and FlashInfer that decides whether it becomes a route
      timeout ${T_ROUNDS_TESTS:-200} python3 -m pytest -q -p no:cacheprovider op_tests/test_sampling.py -k rounds_by_chunks \
        2>&1 | tee "$OUT/pytest-sampling-rounds.log" | tail -n 8
      timeout ${T_ROUNDS_EXCL:-200} python3 -m pytest -q -p no:cacheprovider --durations=5 op_tests/test_sampling_exclusion.py \
        -k rounds_by_chunks 2>&1 | tee "$OUT/pytest-sampling-rounds-exclusion.log" | tail -n 8
      timeout ${T_ROUNDS_SWEEP:-240} python3 op_tests/test_sampling.py --sweep-rounds 2>&1 | tee "$OUT/sweep-sampling-rounds.log" ;;
    sampling-split-sweep)
      timeout 150 python3 op_tests/test_sampling.py --sweep-split 2>&1 | tee "$OUT/sweep-sampling-split.log" ;;
    sampling-bench)
      python3 op_tests/test_sampling.py 2>&1 | tee "$OUT/bench-sampling.log" ;;
    sampling-quick)  # the samplers, softmax, sampling_from_logits and chain speculative sampling
      timeout ${T_BENCH:-240} python3 op_tests/test_sampling.py --quick --spec 2>&1 | tee "$OUT/bench-sampling-quick.log" ;;
    sampling-host)
      python3 op_tests/test_sampling.py --host 2>&1 | tee "$OUT/host-sampling.log" ;;
    sampling-sweep)
      python3 op_tests/test_sampling.py --sweep 2>&1 | tee "$OUT/sweep-sampling.log" ;;
    layer-tests)  # issue 5: the norms, RMSNorm + FP4 and RoPE's tests other than its grid (~4 min on the H200)
      python3 -m pytest -q -p no:cacheprovider op_tests/test_norm.py op_tests/test_norm_fp4.py op_tests/test_rope.py \
        -k "not Hq" 2>&1 | tee "$OUT/pytest-layer.log" | tail -n 15 ;;
    rope-grid)  # FlashInfer's RoPE grid (~10k cases; ~9 min in one process on the H200): four shards by
      # batch size at once, since the time goes to the host (references, launches), not the GPU
      for b in 1 19 99 989; do
        python3 -m pytest -q -p no:cacheprovider op_tests/test_rope.py -k "Hq and B$b-" \
          > "$OUT/pytest-rope-grid-B$b.log" 2>&1 &
      done
      wait
      tail -n 4 "$OUT"/pytest-rope-grid-B*.log ;;
    layer-bench|layer-quick)
      quick=$([ "$section" = layer-quick ] && echo --quick)
      for op in norm rope norm_fp4; do
        python3 op_tests/test_$op.py $quick 2>&1 | tee "$OUT/bench-$op.log"
      done ;;
    gap)
      python3 -m aiter_ext gap 2>&1 | tail -n 3 ;;
    *) echo "unknown section $section"; exit 2 ;;
  esac
done
