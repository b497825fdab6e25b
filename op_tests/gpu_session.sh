#!/usr/bin/env bash
# One lent-GPU call for the ops so far (device time is scarce): the chosen sections, in order, each
# logging to $OUT. Run from the repository root; carry .bench (the FlashInfer bundle made by
# ../shared/tools/flashinfer-bundle).
#   bash op_tests/gpu_session.sh [sections...]
#   sections: merge attention-tests attention-bench sweep attention-variants sparse sparse-tests sparse-bench pod-bench
#             segment-tests segment-bench segment-tune thin-tests plans-tests objects-check host-parts
#             issue18-a issue18-b attention-tune tunes issue18-one lazy-check objects-check-files sampling-tune
#             issue18-next logits-speculative-tune issue18-final issue18-last issue18-close-a issue18-close-b
#             issue18-close-c issue18-rest plans-and-merge-tune
#             sampling-thin tune-launch cold-start launch-bench cascade-decision fi-warm sampling-tests
#             sampling-exclusion sampling-split sampling-split-sweep sampling-rounds sampling-bench
#             sampling-quick sampling-host sampling-sweep layer-tests rope-grid layer-bench layer-quick gap
#   (none given: all of them)
set -uo pipefail
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
    timeout ${T_TUNE_CHECK:-300} python3 -m aiter_ext tune "$op" --check-only --shard $k/$shards \
      > "$OUT/tune-$op-check-$k.log" 2>&1 &
  done
  wait
  grep -h "REJECTED\|failed" "$OUT"/tune-$op-check-*.log | head -n 20
  timeout -s INT ${T_TUNE:-280} python3 -m aiter_ext tune "$op" 2>&1 | tee "$OUT/tune-$op.log" | tail -n 12
  cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
}
sections=${*:-merge attention-tests attention-bench sweep sampling-tests sampling-bench gap}
for section in $sections; do
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
    segment-tune)  # fills configs/tuned_csv/segment_gemm_tuned.csv for this GPU's arch: 8 processes compile and
      # check the candidates first (28 shapes x 15 configs, each a compile: minutes in one process), then one times them
      for k in 0 1 2 3 4 5 6 7; do
        python3 -m aiter_ext tune segment_gemm --check-only --shard $k/8 > "$OUT/tune-check-$k.log" 2>&1 &
      done
      wait
      python3 -m aiter_ext tune segment_gemm 2>&1 | tee "$OUT/tune-segment-gemm.log" | tail -n 40
      cp configs/tuned_csv/segment_gemm_tuned.csv "$OUT/" 2>/dev/null ;;
    attention-tune)  # issue 18: fills configs/tuned_csv/attention_tuned.csv for this GPU's arch (7 shapes x 25 tile
      # configs, each a compile)
      sharded_tune attention 8 ;;
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
    objects-check)  # issue 18: every object built for this GPU's arch, then op suites with each launch an object
      # serves compared byte for byte with Triton's compile of the same launch (core/object_check.py); with
      # OBJECT_BUILD=1, launches no object serves get one built for the check (every launch of the suites)
      arch=$(python3 -c "from aiter_ext.core.arch import get_arch; print(get_arch())")
      # (NO_PREBUILD=1: every object comes from the check's on-demand builds)
      [ -n "${NO_PREBUILD:-}" ] || [ -d /tmp/hsa_objects/$arch ] || timeout ${T_BUILD:-300} python3 -m aiter_ext aot --build --arch $arch \
        --out /tmp/hsa_objects --jobs ${BUILD_JOBS:-16} 2>&1 | tail -n 4 | tee "$OUT/objects-build.log"
      AITER_EXT_HSA_DIR=/tmp/hsa_objects AITER_EXT_OBJECT_CHECK="$OUT/object-check.json" \
        AITER_EXT_OBJECT_CHECK_BUILD=${OBJECT_BUILD:-0} timeout -s INT ${T_OBJECTS:-300} \
        python3 -m pytest -q -p no:cacheprovider ${OBJECT_TESTS:-op_tests/test_norm.py op_tests/test_merge_state.py \
        op_tests/test_paged_kv.py op_tests/test_rope.py -k "not Hq"} 2>&1 | tee "$OUT/pytest-objects.log" | tail -n 8
      cat "$OUT/object-check.json" ;;
    objects-check-files)  # issue 18: objects-check with one process per test file at once (the check's compiles are
      # CPU-bound; one process used one core of 16), each with its own counts file (written as it goes)
      arch=$(python3 -c "from aiter_ext.core.arch import get_arch; print(get_arch())")
      # (NO_PREBUILD=1: every object comes from the check's on-demand builds)
      [ -n "${NO_PREBUILD:-}" ] || [ -d /tmp/hsa_objects/$arch ] || timeout ${T_BUILD:-300} python3 -m aiter_ext aot --build --arch $arch \
        --out /tmp/hsa_objects --jobs ${BUILD_JOBS:-16} 2>&1 | tail -n 4 | tee "$OUT/objects-build.log"
      python3 -c "from aiter_ext.core import thin; thin.native()"  # the C extension built once, before the processes
      for tests in ${OBJECT_TESTS:-op_tests/test_attention_sinks.py op_tests/test_attention_sparse.py \
          op_tests/test_attention_pod.py op_tests/test_sampling.py op_tests/test_serving_prefix.py op_tests/test_bounds.py}; do
        name=$(basename "$tests" .py)
        AITER_EXT_HSA_DIR=/tmp/hsa_objects AITER_EXT_OBJECT_CHECK="$OUT/object-check-$name.json" \
          AITER_EXT_OBJECT_CHECK_BUILD=${OBJECT_BUILD:-1} timeout -s INT ${T_OBJECTS:-300} \
          python3 -m pytest -q -p no:cacheprovider "$tests" > "$OUT/pytest-objects-$name.log" 2>&1 &
      done
      wait
      for f in "$OUT"/pytest-objects-*.log; do echo "$f: $(tail -n 1 "$f")"; done
      cat "$OUT"/object-check-*.json ;;
    host-parts)  # issue 18: where each op's eager host time goes, beside FlashInfer (loops of 5000 calls)
      python3 op_tests/bench_host_parts.py 2>&1 | tee "$OUT/bench-host-parts.log" ;;
    issue18-a)  # issue 18, the first call (each section here fits the 600 s limit; then attention-tune, then
      # issue18-b, as device time allows): FlashInfer's builds and the objects' build beside the plan and sampling
      # tests (the wrappers' plans among them), then the host-time benchmarks on a quiet machine
      FI_WARM="launch attention" bash "$0" fi-warm > "$OUT/s-fi-warm.log" 2>&1 & fi_warm=$!
      arch=$(python3 -c "from aiter_ext.core.arch import get_arch; print(get_arch())")
      (timeout 240 python3 -m aiter_ext aot --build --arch $arch --out /tmp/hsa_objects --jobs 6 \
        > "$OUT/objects-build.log" 2>&1) & build=$!
      timeout 220 python3 -m pytest -q -p no:cacheprovider op_tests/test_plans.py op_tests/test_thin_launch.py \
        op_tests/test_sampling.py -k "plans or thin or seed or object or replay or split or min_p" 2>&1 \
        | tee "$OUT/pytest-issue18.log" | tail -n 8
      wait $fi_warm; wait $build; tail -n 2 "$OUT/objects-build.log"
      bash "$0" host-parts launch-bench ;;
    tunes)  # issue 18: attention's tune (no rows yet; 8 shards) and the three newer targets' (paged_kv_append, softmax,
      # renorm: renorm's last shape has no row) compile and check at once (16 processes), then each is timed alone
      # (SIGINT at its limit keeps the rows timed; the tuner merges them into the committed ones)
      for k in 0 1 2 3 4 5 6 7; do
        timeout ${T_TUNE_CHECK:-200} python3 -m aiter_ext tune attention --check-only --shard $k/8 \
          > "$OUT/tune-attention-check-$k.log" 2>&1 &
      done
      # SMALL_TUNES: which of the three (default all); SMALL_TUNE_ARGS: extra arguments for them (-i a shorter list)
      for op in ${SMALL_TUNES:-paged_kv_append softmax renorm}; do
        timeout ${T_TUNE_CHECK:-200} python3 -m aiter_ext tune $op --check-only ${SMALL_TUNE_ARGS:-} \
          > "$OUT/tune-check-$op.log" 2>&1 &
      done
      wait
      grep -h "REJECTED\|failed" "$OUT"/tune-*check*.log | head -n 20
      timeout -s INT ${T_TUNE:-190} python3 -m aiter_ext tune attention 2>&1 | tee "$OUT/tune-attention.log" | tail -n 10
      cp configs/tuned_csv/attention_tuned.csv "$OUT/" 2>/dev/null
      for op in ${SMALL_TUNES:-paged_kv_append softmax renorm}; do
        timeout -s INT ${T_TUNE_SMALL:-55} python3 -m aiter_ext tune $op ${SMALL_TUNE_ARGS:-} 2>&1 \
          | tee "$OUT/tune-$op.log" | tail -n 6
        cp configs/tuned_csv/${op}_tuned.csv "$OUT/" 2>/dev/null
      done ;;
    sampling-tune)  # issue 18: fills configs/tuned_csv/sampling_tuned.csv for this GPU's arch (8 shapes, each with its
      # filter, x 10 candidates; each candidate's 20000 draws checked by a chi-square test)
      sharded_tune sampling 4 ;;
    issue18-one)  # issue 18 when one call is all the device time allows: FlashInfer's builds, the plan/thin/sampling tests
      # and the small tune targets' checks at once; then, each bounded by what is left of ${T_ONE:-560} s, the launch
      # benchmark (cascade and decode with plans), the small tunes timed, and the host-time parts
      FI_WARM="launch attention" bash "$0" fi-warm > "$OUT/s-fi-warm.log" 2>&1 & fi_warm=$!
      for op in paged_kv_append softmax renorm; do
        timeout ${T_FIRST:-200} python3 -m aiter_ext tune $op --check-only > "$OUT/tune-check-$op.log" 2>&1 &
      done
      timeout ${T_FIRST:-220} python3 -m pytest -q -p no:cacheprovider op_tests/test_plans.py op_tests/test_thin_launch.py \
        op_tests/test_sampling.py -k "plans or thin or seed or object or replay or split or min_p" 2>&1 \
        | tee "$OUT/pytest-issue18.log" | tail -n 8
      wait
      grep -h "REJECTED\|failed" "$OUT"/tune-check-*.log | head -n 20
      left() { echo $(( ${T_ONE:-560} - SECONDS )); }
      timeout -s INT $(( $(left) < 260 ? $(left) : 260 )) python3 op_tests/bench_launch.py \
        --only=${LAUNCH_ONLY:-cascade,decode} 2>&1 | tee "$OUT/bench-launch.log"
      for op in paged_kv_append softmax renorm; do
        [ "$(left)" -gt 40 ] || break
        timeout -s INT 35 python3 -m aiter_ext tune $op 2>&1 | tee "$OUT/tune-$op.log" | tail -n 4
        cp configs/tuned_csv/${op}_tuned.csv "$OUT/" 2>/dev/null
      done
      [ "$(left)" -gt 30 ] && timeout -s INT $(left) python3 op_tests/bench_host_parts.py 2>&1 \
        | tee "$OUT/bench-host-parts.log" ;;
    logits-speculative-tune)  # issue 18: the tune targets added on 2026-12-07 (fifth): sampling from logits (6 shapes x 14
      # candidates, Gumbel-max and chunked) and chain speculative sampling (4 shapes x 11), each candidate's draws checked
      # by a chi-square test; then their plumbing tests on the GPU
      T_TUNE_CHECK=${T_TUNE_CHECK:-150} T_TUNE=${T_TUNE:-120} sharded_tune sampling_from_logits 4
      T_TUNE_CHECK=${T_TUNE_CHECK:-150} T_TUNE=${T_TUNE:-120} sharded_tune chain_speculative_sampling 4
      timeout ${T_TESTS:-120} python3 -m pytest -q -p no:cacheprovider op_tests/test_sampling.py \
        -k "tune or outcome_law" 2>&1 | tee "$OUT/pytest-tune-targets.log" | tail -n 6 ;;
    issue18-close-a)  # issue 18, the session of 2026-12-07 (sixth), call 1 (~520 s; run it under an outer timeout of
      # ~560): FlashInfer's builds in the background; the two newer tune targets' checks (8 processes), then their timed
      # tunes; then, beside FlashInfer, the tuned sampling rows, the host time in interleaved rounds, and bench_launch's
      # host-time rows of the issue's table. Each step bounded by what is left of ${T_CLOSE:-520} s.
      left() { echo $(( ${T_CLOSE:-520} - SECONDS )); }
      FI_WARM="sampling launch" bash "$0" fi-warm > "$OUT/s-fi-warm.log" 2>&1 & fi_warm=$!
      for op in sampling_from_logits chain_speculative_sampling; do
        for k in 0 1 2 3; do
          timeout ${T_TUNE_CHECK:-150} python3 -m aiter_ext tune $op --check-only --shard $k/4 \
            > "$OUT/check-$op-$k.log" 2>&1 &
        done
      done
      for job in $(jobs -p); do [ "$job" = "$fi_warm" ] || wait "$job"; done
      grep -h "REJECTED\|failed\|Error" "$OUT"/check-*.log | head -n 20
      for op_limit in sampling_from_logits:${T_TUNE_LOGITS:-110} chain_speculative_sampling:${T_TUNE_SPEC:-70}; do
        op=${op_limit%%:*}
        timeout -s INT ${op_limit##*:} python3 -m aiter_ext tune $op > "$OUT/tune-$op.log" 2>&1
        grep -v "^  File\|^    " "$OUT/tune-$op.log" | tail -n 24
        cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
      done
      wait "$fi_warm"; tail -n 2 "$OUT"/fi-warm-*.log
      timeout -s INT $(( $(left) < 90 ? $(left) : 90 )) python3 op_tests/bench_sampling_tuned.py 2>&1 \
        | tee "$OUT/bench-sampling-tuned.log"
      [ "$(left)" -gt 20 ] && timeout -s INT $(( $(left) < 100 ? $(left) : 100 )) python3 op_tests/bench_host_parts.py \
        2>&1 | tee "$OUT/bench-host-parts.log"
      [ "$(left)" -gt 20 ] && timeout -s INT $(left) python3 op_tests/bench_launch.py \
        --only=${LAUNCH_ONLY:-merge_state,rmsnorm,rope,min_p} 2>&1 | tee "$OUT/bench-launch.log" ;;
    issue18-close-b)  # issue 18, the session of 2026-12-07 (sixth), call 2 (~480 s; outer timeout ~540): the object check
      # over the suites it has not finished, every launch a code object built on demand for that launch and compared
      # byte for byte with Triton's launch of it. Each file runs as AITER_EXT_TEST_SHARD shards (conftest.py), one
      # process each (16 cores): each launch signature compiles twice, on one core.
      python3 -c "from aiter_ext.core import thin; thin.native()"
      for spec in ${OBJECT_SHARDS:-test_sampling:8 test_attention_sparse:2 test_segment_gemm:2 test_attention_masks:2 \
          test_attention_contract:1}; do
        # name:n runs shards 0..n-1 of the file; name:n:k only shard k of n (one a call did not finish)
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
    data = json.load(open(path))
    for kernel, counts in data.get("object_check", {}).items():
        if isinstance(counts, dict):
            for key, value in counts.items():
                if isinstance(value, (int, float)):
                    totals[(kernel, key)] += value
for (kernel, key), value in sorted(totals.items()):
    print(f"{kernel} {key} {value}")
PY
      ;;
    issue18-close-c)  # issue 18, the session of 2026-12-07 (sixth), the last call (~300 s; outer timeout ~330): the object
      # check over test_sampling, test_attention_sparse and test_segment_gemm in shards beside FlashInfer's builds, then
      # the host time in interleaved rounds with each call's graph replay beside it, and bench_launch's merge_state and
      # min-p rows (eager, host, graph, beside FlashInfer)
      FI_WARM="sampling launch" bash "$0" fi-warm > "$OUT/s-fi-warm.log" 2>&1 &
      OBJECT_SHARDS=${OBJECT_SHARDS:-"test_sampling:6 test_attention_sparse:2 test_segment_gemm:2"} \
        T_OBJECTS=${T_OBJECTS:-190} bash "$0" issue18-close-b
      wait; tail -n 2 "$OUT"/fi-warm-*.log
      timeout -s INT ${T_HOST:-70} python3 op_tests/bench_host_parts.py 2>&1 | tee "$OUT/bench-host-parts.log"
      timeout -s INT ${T_LAUNCH:-40} python3 op_tests/bench_launch.py --only=merge_state,min_p 2>&1 \
        | tee "$OUT/bench-launch.log" ;;
    issue18-rest)  # issue 18, what the session of 2026-12-07 (sixth) left (~540 s; outer timeout ~570): the object check
      # over the GPU suites it has not finished (test_rope in 6 shards, the rest of block-sparse, masks, the attention
      # contract, and test_sampling's unfinished shard), then chain speculative sampling's tune (its 1-row shape's
      # checks take ~6 s a candidate) and sampling_from_logits' two shapes without rows
      OBJECT_SHARDS=${OBJECT_SHARDS:-"test_rope:6 test_attention_sparse:4 test_attention_masks:2 test_attention_contract:1 \
        test_sampling:6:1"} T_OBJECTS=${T_OBJECTS:-280} bash "$0" issue18-close-b
      printf 'rows,vocab,dtype\n256,151936,bf16\n1,256000,fp32\n' > /tmp/logits_rest.csv
      timeout -s INT ${T_TUNE_SPEC:-130} python3 -m aiter_ext tune chain_speculative_sampling \
        > "$OUT/tune-chain_speculative_sampling.log" 2>&1
      timeout -s INT ${T_TUNE_LOGITS:-90} python3 -m aiter_ext tune sampling_from_logits -i /tmp/logits_rest.csv \
        > "$OUT/tune-sampling_from_logits.log" 2>&1
      for op in chain_speculative_sampling sampling_from_logits; do
        grep -v "^  File\|^    " "$OUT/tune-$op.log" | tail -n 16
        cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
      done ;;
    plans-and-merge-tune)  # issue 18, added after the session of 2026-12-07 (sixth), ~330 s: sampling_from_logits'
      # call plans bit-equal to the usual path and replayed, merge_states' tune (its new target: split attention's
      # and cascade's merge), then the host time beside FlashInfer (its sampling module built in the background)
      FI_WARM=sampling bash "$0" fi-warm > "$OUT/s-fi-warm.log" 2>&1 &
      timeout ${T_TESTS:-120} python3 -m pytest -q -p no:cacheprovider op_tests/test_plans.py -k "logits or slots" 2>&1 \
        | tee "$OUT/pytest-logits-plans.log" | tail -n 6
      T_TUNE_CHECK=${T_TUNE_CHECK:-60} T_TUNE=${T_TUNE:-60} sharded_tune merge_states 2
      wait
      timeout -s INT ${T_HOST:-90} python3 op_tests/bench_host_parts.py 2>&1 | tee "$OUT/bench-host-parts.log" ;;
    issue18-last)  # issue 18, the tunes issue18-final did not reach (~330 s; run under an outer timeout so the logs come
      # back): the two new targets, and the sampling tune at its batched shapes (the 1-row ones timed slower with the row
      # kernel alone than the policy's split route there); each op's checks first, two shards at once
      printf 'rows,vocab,dtype,filter\n64,128256,fp32,top_k_top_p\n256,128256,fp32,top_p\n256,128256,fp32,top_k\n%s\n%s\n' \
        256,151936,fp32,min_p 64,32000,fp32,plain > /tmp/sampling_batched.csv
      for k in 0 1; do
        for op in sampling_from_logits chain_speculative_sampling; do
          timeout ${T_TUNE_CHECK:-90} python3 -m aiter_ext tune $op --check-only --shard $k/2 > "$OUT/check-$op-$k.log" 2>&1 &
        done
        timeout ${T_TUNE_CHECK:-90} python3 -m aiter_ext tune sampling -i /tmp/sampling_batched.csv --check-only \
          --shard $k/2 > "$OUT/check-sampling-$k.log" 2>&1 &
      done
      wait
      grep -h "REJECTED\|failed\|Error" "$OUT"/check-*.log | head -n 20
      for op_limit in sampling_from_logits:${T_TUNE_LOGITS:-95} chain_speculative_sampling:${T_TUNE_SPEC:-65} \
          sampling:${T_TUNE_SAMPLING:-60}; do
        op=${op_limit%%:*}
        args=$([ $op = sampling ] && echo "-i /tmp/sampling_batched.csv")
        timeout -s INT ${op_limit##*:} python3 -m aiter_ext tune $op $args > "$OUT/tune-$op.log" 2>&1
        grep -v "^  File\|^    " "$OUT/tune-$op.log" | tail -n 30
        cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
      done ;;
    issue18-final)  # issue 18, one call of ~560 s (2026-12-07, fifth): the three sampling tunes' checks at once (warming the
      # kernel cache), the object check per test file (objects built on demand: on sm_90 the launches take NVIDIA tiles
      # that the AMD specs do not hold), the three tunes timed, then merge_state's host time beside FlashInfer
      for k in 0 1 2 3; do
        timeout ${T_TUNE_CHECK:-150} python3 -m aiter_ext tune sampling --check-only --shard $k/4 \
          > "$OUT/tune-sampling-check-$k.log" 2>&1 &
      done
      for op in sampling_from_logits chain_speculative_sampling; do
        for k in 0 1; do
          timeout ${T_TUNE_CHECK:-150} python3 -m aiter_ext tune $op --check-only --shard $k/2 \
            > "$OUT/tune-$op-check-$k.log" 2>&1 &
        done
      done
      wait
      grep -h "REJECTED\|failed\|Error" "$OUT"/tune-*-check-*.log | head -n 20
      NO_PREBUILD=1 T_OBJECTS=${T_OBJECTS:-170} bash "$0" objects-check-files
      for op_limit in sampling:${T_TUNE_SAMPLING:-95} sampling_from_logits:${T_TUNE_LOGITS:-75} \
          chain_speculative_sampling:${T_TUNE_SPEC:-50}; do
        op=${op_limit%%:*}
        timeout -s INT ${op_limit##*:} python3 -m aiter_ext tune $op 2>&1 | tee "$OUT/tune-$op.log" | tail -n 10
        cp "configs/tuned_csv/${op}_tuned.csv" "$OUT/" 2>/dev/null
      done
      timeout -s INT ${T_LAUNCH:-40} python3 op_tests/bench_launch.py --only=merge_state 2>&1 | tee "$OUT/bench-launch.log" ;;
    issue18-next)  # issue 18, what the session of 2026-12-07 (fourth) left for the GPU, in one call of ~560 s: the objects
      # built beside the sampling tune's checks, the object check over the suites it has not reached (one process per
      # file), the sampling tune timed, then merge_state's host time beside FlashInfer
      arch=$(python3 -c "from aiter_ext.core.arch import get_arch; print(get_arch())")
      (timeout ${T_BUILD:-200} python3 -m aiter_ext aot --build --arch $arch --out /tmp/hsa_objects --jobs 10 \
        > "$OUT/objects-build.log" 2>&1) & build=$!
      for k in 0 1 2 3; do
        timeout ${T_TUNE_CHECK:-200} python3 -m aiter_ext tune sampling --check-only --shard $k/4 \
          > "$OUT/tune-sampling-check-$k.log" 2>&1 &
      done
      wait
      tail -n 2 "$OUT/objects-build.log"; grep -h "REJECTED\|failed" "$OUT"/tune-sampling-check-*.log | head -n 20
      T_OBJECTS=${T_OBJECTS:-180} bash "$0" objects-check-files
      timeout -s INT ${T_TUNE:-110} python3 -m aiter_ext tune sampling 2>&1 | tee "$OUT/tune-sampling.log" | tail -n 12
      cp configs/tuned_csv/sampling_tuned.csv "$OUT/" 2>/dev/null
      timeout -s INT ${T_LAUNCH:-60} python3 op_tests/bench_launch.py --only=merge_state 2>&1 | tee "$OUT/bench-launch.log" ;;
    issue18-b)  # issue 18, a later call on the machine issue18-a warmed (its objects under /tmp/hsa_objects): the
      # object check over the suites no check has reached yet (launches no object serves get one built), then the
      # cold starts (about 160 s)
      OBJECT_BUILD=1 T_OBJECTS=${T_OBJECTS:-260} OBJECT_TESTS="op_tests/test_paged_kv.py op_tests/test_cascade.py \
        op_tests/test_attention.py op_tests/test_sampling.py" bash "$0" objects-check
      bash "$0" cold-start ;;
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
