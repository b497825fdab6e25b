"""Test helpers for attention: random paged KV caches with shuffled page tables."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICE

from aiter_ext.ops.attention import plan as plan_module


@pytest.fixture(params=[False, True], ids=["whole", "split"])
def split_kv(request, monkeypatch):
    """Split every request's KV into 32-key chunks (the merge path), or not."""
    if request.param:
        monkeypatch.setattr(plan_module, "choose_splits", lambda programs, cu_num, max_splits: max_splits)
        monkeypatch.setattr(plan_module, "MIN_CHUNK", 32)
    return request.param


def i32(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32)


def indptr_of(lengths) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    return i32(out)


def random_paged_kv(kv_lens, num_kv_heads, head_dim, page_size, dtype, layout="NHD", spare_pages=3):
    """A 5-D cache of random values and a CSR page table over shuffled page ids (never 0..n in order,
    so a kernel that ignores kv_indices fails). Returns (cache, kv_indptr, kv_indices, kv_last_page_len),
    the page table on the CPU as plan() receives it."""
    pages_per_req = [(n + page_size - 1) // page_size for n in kv_lens]
    total = sum(pages_per_req) + spare_pages
    ids = torch.randperm(total)[: sum(pages_per_req)].to(torch.int32)
    shape = (total, 2, page_size, num_kv_heads, head_dim) if layout == "NHD" else \
        (total, 2, num_kv_heads, page_size, head_dim)
    cache = torch.randn(shape, device=DEVICE).to(dtype)
    last = [(n - (p - 1) * page_size) if p else 0 for n, p in zip(kv_lens, pages_per_req)]
    return cache, indptr_of(pages_per_req), ids, i32(last)


def kv_of(cache, layout="NHD"):
    """The 4-D K and V views of a 5-D cache."""
    return cache[:, 0], cache[:, 1]


def bench_paged_case(name, qo_lens, kv_lens, causal, configs, fi, peak_tflops, copy_gbs, *, num_qo_heads=32,
                     num_kv_heads=8, head_dim=128, page_size=16, dtype=torch.bfloat16, ragged=False):
    """Time ``BatchPrefillWithPagedKVCacheWrapper`` on one shape for each config (``None``: the plan's
    default), each output checked against FlashInfer's (or, without it, the fp32 reference) first.
    Rows: time, the floor (max of FLOPs at ``peak_tflops`` and bytes at ``copy_gbs``), percent of it,
    and FlashInfer's time in the same run: its prefill wrapper, and for decode the faster of that and
    its tensor-core decode wrapper. ``ragged``: ours reads the same KV gathered into contiguous
    ``[tokens, Hkv, D]`` tensors (BatchPrefillWithRaggedKVCacheWrapper), to see what paging costs."""
    import aiter_ext
    from aiter_ext.core.bench import time_us
    from aiter_ext.core.testing import max_error
    from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv

    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, num_kv_heads, head_dim, page_size, dtype,
                                                         spare_pages=0)
    dev = cache.device
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, head_dim, device=dev).to(dtype)
    args = (qo_indptr.to(dev), kv_indptr.to(dev), kv_indices.to(dev), last.to(dev), num_qo_heads, num_kv_heads,
            head_dim, page_size)
    fi_us = None
    if fi is not None:
        fw = fi.BatchPrefillWithPagedKVCacheWrapper(torch.empty(512 << 20, dtype=torch.uint8, device=dev), "NHD")
        fw.plan(*args, causal=causal, q_data_type=dtype, kv_data_type=dtype)
        expected = fw.run(q, cache)
        fi_us = time_us(lambda: fw.run(q, cache))
        if set(qo_lens) == {1}:  # decode: FlashInfer's decode wrapper is the one to beat
            fd = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(512 << 20, dtype=torch.uint8, device=dev), "NHD",
                                                       use_tensor_cores=True)
            fd.plan(*args[1:], q_data_type=dtype, kv_data_type=dtype)
            fi_us = min(fi_us, time_us(lambda: fd.run(q, cache)))
    else:
        kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(dev), kv_indices.to(dev), last.to(dev))
        expected = batch_attention_ref(q, qo_indptr.to(dev), kv, causal)[0].to(dtype)
    flops = sum(4 * num_qo_heads * head_dim * (n_q * n_kv - (n_q * (n_q - 1) // 2 if causal else 0))
                for n_q, n_kv in zip(qo_lens, kv_lens))
    nbytes = 2 * sum(kv_lens) * num_kv_heads * head_dim * dtype.itemsize + 2 * q.numel() * dtype.itemsize
    floor_us = max(flops / (peak_tflops * 1e6), nbytes / (copy_gbs * 1e3))
    ws = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
    if ragged:
        kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(dev), kv_indices.to(dev), last.to(dev))
        k_ragged, v_ragged = (torch.cat([pair[i] for pair in kv]).contiguous() for i in (0, 1))
        ragged_args = (qo_indptr.to(dev), indptr_of(kv_lens).to(dev), num_qo_heads, num_kv_heads, head_dim)
    rows = []
    for cfg in configs:
        w = (aiter_ext.BatchPrefillWithRaggedKVCacheWrapper if ragged else aiter_ext.BatchPrefillWithPagedKVCacheWrapper)(ws)
        w._config = cfg
        row = {"case": name + (" [ragged]" if ragged else ""), "config": "default" if cfg is None else str(cfg)}
        run = (lambda: w.run(q, k_ragged, v_ragged)) if ragged else (lambda: w.run(q, cache))
        try:
            w.plan(*(ragged_args if ragged else args), causal=causal, q_data_type=dtype)
            err = max_error(run(), expected)
            if not err <= 5e-2:
                rows.append({**row, "note": f"WRONG (max error {err:.3g})"})
                continue
            us = time_us(run)
        except Exception as exc:  # a config that does not compile (too much shared memory, ...)
            rows.append({**row, "note": f"{type(exc).__name__}: {str(exc)[:80]}"})
            continue
        rows.append({**row, "us": us, "TFLOP/s": flops / us / 1e6, "GB/s": nbytes / us / 1e3, "floor_us": floor_us,
                     "%floor": 100 * floor_us / us, "fi_us": fi_us, "fi/ours": fi_us / us if fi_us else None,
                     "programs": w._plan.work.num_work * num_kv_heads, "split": w._plan.work.split})
    return rows


def print_amd_compile_table(shapes, head_dim=128, dtype="bf16") -> bool:
    """The gfx942/gfx950 compile table of the attention configs an AMD launch of these shapes uses:
    ``shapes`` = (largest packed rows, group, causal) per launch; both split and direct variants.
    Returns whether every compile passed (no spills, LDS within the arch's limit, MFMA for the dots)."""
    from aiter_ext.core import aot
    from aiter_ext.ops.attention.kernels import kernel_spec

    jobs = {}  # shapes that pick the same tiles share one compile
    for arch in aot.DEFAULT_ARCHS:
        for rows, group, causal in shapes:
            for split in (True, False):
                spec = kernel_spec(dtype, head_dim, rows, group, True, split, arch=arch, CAUSAL=causal,
                                   label="" if causal else "-nocausal")
                jobs[(spec.name, arch)] = (spec, arch)
    reports = aot.compile_reports(list(jobs.values()))
    for arch in aot.DEFAULT_ARCHS:
        print(f"\nAMD compile check, {arch} (Triton's AMD backend, no GPU needed):")
        print(aot.format_table([r for r in reports if r.arch == arch], arch))
    return all(r.ok for r in reports)


def attention_bench_setup(description: str, amd_shapes, argv=None):
    """What the attention benchmarks share: their flags, the AMD compile table of ``amd_shapes`` (see
    ``print_amd_compile_table``), the GPU and FlashInfer checks, warm-up and the copy bandwidth.
    Returns ``(exit_code, None)`` when the benchmark should stop there, else ``(None, context)`` with
    context = (args, flashinfer module or None, copy GB/s)."""
    import argparse

    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, warm_up_gpu

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="measured bf16 matmul rate of this GPU")
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--amd-table", choices=("yes", "no", "only"), default="yes",
                        help="print the gfx942/gfx950 compile table of the configs these shapes use")
    args = parser.parse_args(argv)
    if args.amd_table != "no" and not print_amd_compile_table(amd_shapes):
        return 1, None
    if args.amd_table == "only":
        return 0, None
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 2, None
    warm_up_gpu()
    return None, (args, fi, copy_bandwidth_gbs())
