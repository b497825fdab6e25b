"""The sampling ops' tuned rows for this GPU's arch, beside the policy and FlashInfer (issue 18).

    python op_tests/bench_sampling_tuned.py [--no-flashinfer]

Per row of ``configs/tuned_csv/{sampling,sampling_from_logits,chain_speculative_sampling}_tuned.csv`` measured on
this arch: our public call (which the row serves), the same call with the tuned table hidden (the policy's route
and tile), and FlashInfer's call, each eager (``do_bench``, an L2 flush between calls), as a CUDA-graph replay and
as host time per call issued back to back. The inputs are the tuner's (every row of the batch one distribution:
softmax of N(0, 3) logits; thresholds placed in gaps by ``sampling_tune_thresholds``; chain speculative sampling
with 3 drafts), so the graph column compares with the row's ``us``. ``floor``: one read of the inputs at the copy
bandwidth measured in the same run; ``% floor`` is the floor over our graph replay.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

from aiter_ext.core import tuned
from aiter_ext.core.arch import device_info
from aiter_ext.core.backend import OPS
from aiter_ext.core.bench import (
    benchmark_setup, copy_bandwidth_gbs, git_commit, host_time_us, markdown_table, time_us, warm_up_gpu,
)
from aiter_ext.ops import sampling as S
from aiter_ext.ops.sampling.backends import SPECULATIVE_TUNE_DRAFTS, sampling_tune_thresholds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: the ``sampling`` op's filter key -> (the public sampler, the thresholds it takes, in order)
SAMPLERS = {"plain": ("sampling_from_probs", ()), "top_k": ("top_k_sampling_from_probs", ("top_k",)),
            "top_p": ("top_p_sampling_from_probs", ("top_p",)), "min_p": ("min_p_sampling_from_probs", ("min_p",)),
            "top_k_top_p": ("top_k_top_p_sampling_from_probs", ("top_k", "top_p"))}


def _probs_case(row: dict, fi):
    """``sampling``: the draw with the row's filter. Top-k + top-p is the joint filter, as the tuner runs it."""
    rows, vocab = row["rows"], row["vocab"]
    dist = torch.softmax(torch.randn(vocab, dtype=torch.float64) * 3, -1)
    probs = dist.to(DTYPES[row["dtype"]]).expand(rows, vocab).contiguous().cuda()
    name, keys = SAMPLERS[row["filter"]]
    limits = sampling_tune_thresholds(dist, row["filter"])
    args = tuple(limits[k] for k in keys)
    kw = {"filter_apply_order": "joint"} if row["filter"] == "top_k_top_p" else {}
    theirs = fi and (lambda: getattr(fi.sampling, name)(probs, *args, **kw))
    return f"{name} {rows} x {vocab} {row['dtype']}", lambda: getattr(S, name)(probs, *args, **kw), theirs, \
        probs.numel() * probs.element_size()


def _logits_case(row: dict, fi):
    rows, vocab = row["rows"], row["vocab"]
    logits = (torch.randn(vocab, dtype=torch.float64) * 3).to(DTYPES[row["dtype"]]).expand(rows, vocab)
    logits = logits.contiguous().cuda()
    theirs = fi and (lambda: fi.sampling.sampling_from_logits(logits))
    return f"sampling_from_logits {rows} x {vocab} {row['dtype']}", lambda: S.sampling_from_logits(logits), theirs, \
        logits.numel() * logits.element_size()


def _speculative_case(row: dict, fi):
    rows, vocab, n = row["rows"], row["vocab"], SPECULATIVE_TUNE_DRAFTS
    logits = torch.randn(n + 1, vocab, dtype=torch.float64) * 2
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits[:n] + torch.randn(n, vocab, dtype=torch.float64), -1)
    drafts = torch.multinomial(q, 1)[:, 0]
    draft_probs = q.float().expand(rows, n, vocab).contiguous().cuda()
    target_probs = p.float().expand(rows, n + 1, vocab).contiguous().cuda()
    draft_ids = drafts.int().expand(rows, n).contiguous().cuda()
    args = (draft_probs, draft_ids, target_probs)
    theirs = fi and (lambda: fi.sampling.chain_speculative_sampling(*args))
    return f"chain_speculative_sampling {rows} x {vocab}, {n} drafts", lambda: S.chain_speculative_sampling(*args), \
        theirs, (draft_probs.numel() + target_probs.numel()) * 4


CASES = {"sampling": _probs_case, "sampling_from_logits": _logits_case,
         "chain_speculative_sampling": _speculative_case}


def _measure(fn) -> tuple[float, float, float]:
    fn()
    torch.cuda.synchronize()
    return time_us(fn), time_us(fn, graph=True), host_time_us(fn)


def _policy(op: str, fn) -> tuple[float, float, float]:
    """``fn`` timed with ``op``'s tuned table hidden (an empty CSV), so its calls take the policy's route."""
    with tempfile.NamedTemporaryFile("w", suffix=".csv") as empty:
        variable = f"AITER_EXT_TUNED_CSV_{op.upper()}"
        os.environ[variable] = empty.name
        OPS[op].clear_cache()
        try:
            return _measure(fn)
        finally:
            del os.environ[variable]
            OPS[op].clear_cache()


def main() -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in sys.argv)
    if not ok:
        return 1
    warm_up_gpu()
    copy_gbs = copy_bandwidth_gbs()
    arch = device_info().arch
    print(f"{torch.cuda.get_device_name()} ({arch}), commit {git_commit()}, copy {copy_gbs:.0f} GB/s")
    table = []
    for op, make in CASES.items():
        for row in tuned.load_rows(op):
            if row["arch"] != arch:
                continue
            torch.manual_seed(0)
            name, ours, theirs, nbytes = make(row, fi)
            eager, graph, host = _measure(ours)
            policy = _policy(op, ours) if row["config"] != "{}" else (eager, graph, host)
            floor = nbytes / (copy_gbs * 1e3)
            result = {"call": name, "row": row["config"], "row us (tuner)": row["us"], "eager": eager,
                      "graph": graph, "host": host, "policy eager": policy[0], "policy graph": policy[1],
                      "floor us": floor, "% floor": 100 * floor / graph}
            if theirs is not None:
                fi_eager, fi_graph, fi_host = _measure(theirs)
                result.update({"fi eager": fi_eager, "fi graph": fi_graph, "fi host": fi_host,
                               "fi / ours graph": fi_graph / graph})
            table.append(result)
            print(markdown_table([result]).splitlines()[-1], flush=True)  # a call cut short keeps what it measured
    if not table:
        print(f"no tuned sampling rows for {arch}")
        return 0
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
