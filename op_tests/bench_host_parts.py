"""Where an eager call's host time goes (issue 18), beside FlashInfer's call, in loops of many calls.

    python op_tests/bench_host_parts.py [--no-flashinfer]

Per op: its plan state (plans kept, refused), the host time of a call issued back to back, and FlashInfer's,
in rounds taken in turn (ROUNDS), so that a slow spell of the host falls on both sides. Then the parts a call
is made of: the plan key and lookup, the allocations, the samplers' seed and workspace. A loop this long is
held by the GPU where a kernel takes longer than the host's part (RoPE at 8192 tokens): ``bench_launch.py``
times those.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import aiter_ext
from aiter_ext.core.bench import benchmark_setup, time_us
from aiter_ext.core.launch import current_stream
from aiter_ext.ops.merge_state.api import PLANS as MERGE
from aiter_ext.ops.norm.api import PLANS as NORM
from aiter_ext.ops.rope.api import PLANS as ROPE
from aiter_ext.ops.sampling import inputs, seeds
from aiter_ext.ops.sampling.api import PLANS as SAMPLING
from aiter_ext.ops.sampling.logits import PLANS as LOGITS


#: the host-time loops: rounds of ours and FlashInfer's in turn (one long loop each read a host's slow spell as one
#: side's cost: merge_state +3.56 us over FlashInfer on one host, -1.54 on another, the same code)
ROUNDS, ROUND_CALLS, ROUND_WARMUP = 7, 1000, 100


def per_call_us(fn, calls: int = 5000, warmup: int = 200) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return elapsed


def main() -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in sys.argv)
    if not ok:
        return 1
    dev, bf16 = "cuda", torch.bfloat16
    r = lambda *s: torch.randn(*s, device=dev).to(bf16)  # noqa: E731
    x16, x256, w, res = r(16, 4096), r(256, 4096), r(4096), r(256, 4096)
    va, vb = r(64, 32, 128), r(64, 32, 128)
    sa, sb = torch.randn(64, 32, device=dev), torch.randn(64, 32, device=dev)
    q, k = r(8192, 32, 128), r(8192, 8, 128)
    indptr = torch.tensor([0, 8192], dtype=torch.int32, device=dev)
    offsets = torch.zeros(1, dtype=torch.int32, device=dev)
    probs = torch.softmax(torch.randn(1, 128256, device=dev), -1)
    probs8 = torch.softmax(torch.randn(8, 128256, device=dev), -1)
    logits = torch.randn(1, 128256, device=dev) * 3
    S = fi and fi.sampling
    ops = [
        ("rmsnorm [16, 4096]", lambda: aiter_ext.rmsnorm(x16, w), NORM, fi and (lambda: fi.rmsnorm(x16, w))),
        ("rmsnorm [256, 4096]", lambda: aiter_ext.rmsnorm(x256, w), NORM, fi and (lambda: fi.rmsnorm(x256, w))),
        ("fused_add_rmsnorm [256, 4096]", lambda: aiter_ext.fused_add_rmsnorm(x256, res, w), NORM,
         fi and (lambda: fi.fused_add_rmsnorm(x256, res, w))),
        ("merge_state 64 x 32 x 128", lambda: aiter_ext.merge_state(va, sa, vb, sb), MERGE,
         fi and (lambda: fi.merge_state(va, sa, vb, sb))),
        ("apply_llama31_rope 8192 (GPU-bound here)", lambda: aiter_ext.apply_llama31_rope(q, k, indptr, offsets), ROPE,
         fi and (lambda: fi.apply_llama31_rope(q, k, indptr, offsets))),
        ("min_p_sampling_from_probs 1 x 128256", lambda: aiter_ext.min_p_sampling_from_probs(probs, 0.05), SAMPLING,
         S and (lambda: S.min_p_sampling_from_probs(probs, 0.05))),
        ("top_p_sampling_from_probs 1 x 128256", lambda: aiter_ext.top_p_sampling_from_probs(probs, 0.9), SAMPLING,
         S and (lambda: S.top_p_sampling_from_probs(probs, 0.9))),
        ("sampling_from_probs 1 x 128256", lambda: aiter_ext.sampling_from_probs(probs), SAMPLING,
         S and (lambda: S.sampling_from_probs(probs))),
        ("top_k_sampling_from_probs 8 x 128256", lambda: aiter_ext.top_k_sampling_from_probs(probs8, 50), SAMPLING,
         S and (lambda: S.top_k_sampling_from_probs(probs8, 50))),
        ("sampling_from_logits 1 x 128256", lambda: aiter_ext.sampling_from_logits(logits), LOGITS,
         S and (lambda: S.sampling_from_logits(logits))),
    ]
    print(f"{torch.cuda.get_device_name()}: us per call; {ROUNDS} rounds, each a loop of ours then one of "
          f"FlashInfer's ({ROUND_CALLS} calls after {ROUND_WARMUP}); medians over the rounds, and the median of the "
          "rounds' differences")
    print("(graph: the call's CUDA-graph replay, the GPU's time; a loop no faster than it is GPU-bound, not "
          "host-bound)")
    print("| op | ours | FlashInfer | ours - FI (paired) | ours graph | FI graph | plans kept / refused |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ours, owner, theirs in ops:
        mine, other, diffs = [], [], []
        for _ in range(ROUNDS):  # interleaved: a host that slows down for a while slows both sides' rounds alike
            mine.append(per_call_us(ours, ROUND_CALLS, ROUND_WARMUP))
            if theirs:
                other.append(per_call_us(theirs, ROUND_CALLS, ROUND_WARMUP))
                diffs.append(mine[-1] - other[-1])
        states = list(owner._plans.values())
        fi_us, diff = (statistics.median(other), statistics.median(diffs)) if theirs else (float("nan"), float("nan"))
        graph, fi_graph = time_us(ours, graph=True), time_us(theirs, graph=True) if theirs else float("nan")
        print(f"| {name} | {statistics.median(mine):.2f} | {fi_us:.2f} | {diff:+.2f} | {graph:.2f} | {fi_graph:.2f} | "
              f"{sum(1 for s in states if s)} / {sum(1 for s in states if s is False)} |", flush=True)
    parts = {
        "rmsnorm's key and lookup": lambda: NORM.find(x16, w, None, 1e-6, False, None),
        "merge_state's key and lookup": lambda: MERGE.find(va, sa, vb, sb, None),
        "torch.empty_like [64, 32, 128] bf16": lambda: torch.empty_like(va),
        "torch.empty(1) int32": lambda: torch.empty(1, dtype=torch.int32, device=dev),
        "torch.zeros(200) int32": lambda: torch.zeros(200, dtype=torch.int32, device=dev),
        "torch.randint seed (the draw per call before the pool)": lambda: torch.randint(
            0, 2**62, (1,), device=dev, dtype=torch.int64),
        "the samplers' seed (seeds.drawn_seed)": lambda: seeds.drawn_seed(None, probs.device),
        "prepare_draw (checks, seed, outputs)": lambda: inputs.prepare_draw(probs, "probs", None, None, False, None,
                                                                            None),
        "torch.cuda.is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "current_stream": lambda: current_stream(0),
    }
    print("\n| part | us per call |\n| --- | --- |")
    for name, fn in parts.items():
        print(f"| {name} | {per_call_us(fn):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
