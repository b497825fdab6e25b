"""Backend selection order and tuned-CSV lookup, on a scratch op and scratch CSVs.

Covers: explicit argument, FlashInfer's "auto"/"fa2"/"fa3", the environment (per op and global), an
explicit request that cannot run, a tuned row hit, the nearest shape, the nearest CU count, a miss, a
stale row (its backend cannot run), decisions cached per shape bucket, and the tuner writing rows.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: E402,F401  (sets TRITON_INTERPRET on a GPU-less machine)

from aiter_ext.core import backend as backend_mod  # noqa: E402
from aiter_ext.core import tuned  # noqa: E402
from aiter_ext.core.backend import BackendUnavailableError, Op, pow2_bucket  # noqa: E402

KEYS = ("num_tokens", "head_dim", "dtype")


def _op(name="scratch"):
    op = Op(name, KEYS, lambda c: (pow2_bucket(c["num_tokens"]), c["head_dim"], c["dtype"]))
    op.register("torch", lambda: "torch")
    op.register("triton", lambda: "triton", configs=[{"BLOCK": 1}, {"BLOCK": 2}])
    op.register("ck", lambda: "ck", supports=lambda c: (c["head_dim"] % 8 == 0, "head_dim must be a multiple of 8"))
    return op


CALL = {"num_tokens": 100, "head_dim": 128, "dtype": "bf16"}


@pytest.fixture
def gpu_like(monkeypatch):
    """Pretend every kernel backend is available, so selection logic is tested independently of this machine."""
    monkeypatch.setattr(backend_mod, "backend_status", lambda name: (True, "test"))
    monkeypatch.delenv("AITER_EXT_BACKEND", raising=False)
    monkeypatch.delenv("AITER_EXT_BACKEND_SCRATCH", raising=False)
    monkeypatch.setenv("AITER_EXT_ARCH", "gfx942")
    monkeypatch.setenv("AITER_EXT_CU_NUM", "304")


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=tuned.header(KEYS))
        w.writeheader()
        for r in rows:
            w.writerow({"us": 1.0, "bw_gbs": 1, "tflops": 0, "err": 0, **r})


def _row(backend, cfg, arch="gfx942", cu=304, n=128, d=128, dtype="bf16"):
    return {"arch": arch, "cu_num": cu, "num_tokens": n, "head_dim": d, "dtype": dtype, "backend": backend,
            "config": json.dumps(cfg)}


def test_priority_order_without_csv(gpu_like, monkeypatch, tmp_path):
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(tmp_path / "none.csv"))
    choice = _op().select(CALL)
    assert (choice.impl.backend, choice.how, choice.config) == ("triton", "priority", {})


@pytest.mark.parametrize("value", [None, "auto", "fa2", "fa3"])
def test_flashinfer_backend_values_mean_automatic(gpu_like, monkeypatch, tmp_path, value):
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(tmp_path / "none.csv"))
    assert _op().select(CALL, value).how == "priority"


def test_explicit_argument_wins_and_env_is_next(gpu_like, monkeypatch, tmp_path):
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(tmp_path / "none.csv"))
    op = _op()
    assert op.select(CALL, "ck").impl.backend == "ck"
    monkeypatch.setenv("AITER_EXT_BACKEND", "torch")
    assert op.select(CALL).impl.backend == "torch"
    monkeypatch.setenv("AITER_EXT_BACKEND_SCRATCH", "ck")  # the per-op variable beats the global one
    assert (op.select(CALL).impl.backend, op.select(CALL).how) == ("ck", "environment")
    assert op.select(CALL, "triton").impl.backend == "triton"  # and the argument beats both


def test_explicit_request_that_cannot_run_raises(gpu_like, monkeypatch):
    op = _op()
    with pytest.raises(BackendUnavailableError, match="head_dim must be a multiple of 8"):
        op.select({**CALL, "head_dim": 100}, "ck")
    monkeypatch.setenv("AITER_EXT_BACKEND_SCRATCH", "asm")
    with pytest.raises(BackendUnavailableError, match="AITER_EXT_BACKEND_SCRATCH=.*has no 'asm' backend"):
        op.select(CALL)


def test_unavailable_backend_reason_is_quoted(monkeypatch):
    monkeypatch.setattr(backend_mod, "backend_status", lambda name: (name == "torch", f"{name} is off in this test"))
    with pytest.raises(BackendUnavailableError, match="triton is off in this test"):
        _op().select(CALL, "triton")
    assert _op().select(CALL).impl.backend == "torch"  # automatic: falls back to the reference


def test_tuned_exact_nearest_shape_nearest_cu_and_miss(gpu_like, monkeypatch, tmp_path):
    path = tmp_path / "scratch_tuned.csv"
    _write_csv(path, [_row("ck", {"x": 1}, n=128), _row("triton", {"BLOCK": 2}, n=4096),
                      _row("triton", {"BLOCK": 7}, cu=80, n=128)])
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(path))
    tuned.STATS.clear()

    hit = tuned.lookup("scratch", {**CALL, "num_tokens": 128}, KEYS)
    assert (hit.backend, hit.config, hit.source) == ("ck", {"x": 1}, "exact")
    near = tuned.lookup("scratch", {**CALL, "num_tokens": 2048}, KEYS)
    assert near.backend == "triton" and near.config == {"BLOCK": 2} and "nearest shape" in near.source
    assert tuned.lookup("scratch", {**CALL, "dtype": "fp16"}, KEYS) is None  # dtype never matches "nearly"

    monkeypatch.setenv("AITER_EXT_CU_NUM", "96")  # no row for 96 CUs: the nearest CU count (80) serves
    other_cu = tuned.lookup("scratch", {**CALL, "num_tokens": 128}, KEYS)
    assert other_cu.config == {"BLOCK": 7} and "cu_num 80" in other_cu.source
    monkeypatch.setenv("AITER_EXT_ARCH", "gfx950")  # no row for the arch at all
    assert tuned.lookup("scratch", CALL, KEYS) is None
    assert tuned.STATS[("scratch", "exact")] == 1 and tuned.STATS[("scratch", "nearest_shape")] == 1
    assert tuned.STATS[("scratch", "nearest_cu")] == 1 and tuned.STATS[("scratch", "miss")] == 2


def test_tuned_row_is_used_and_stale_row_falls_through(gpu_like, monkeypatch, tmp_path):
    path = tmp_path / "scratch_tuned.csv"
    _write_csv(path, [_row("ck", {"x": 1}, n=128, d=128), _row("ck", {"x": 2}, n=128, d=100)])
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(path))
    op = _op()
    choice = op.select({**CALL, "num_tokens": 128})
    assert (choice.impl.backend, choice.config, choice.how) == ("ck", {"x": 1}, "tuned")
    stale = op.select({**CALL, "num_tokens": 128, "head_dim": 100})  # ck cannot do head_dim 100
    assert (stale.impl.backend, stale.how) == ("triton", "priority")


def test_decisions_are_cached_per_bucket(gpu_like, monkeypatch, tmp_path):
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(tmp_path / "none.csv"))
    op = _op()
    calls = []
    monkeypatch.setattr(tuned, "lookup", lambda *a: calls.append(a))
    op.select({**CALL, "num_tokens": 100})
    op.select({**CALL, "num_tokens": 120})  # same power-of-two bucket: no second lookup
    op.select({**CALL, "num_tokens": 300})
    assert len(calls) == 2


def test_write_rows_merges_and_replaces(tmp_path):
    path = tmp_path / "t.csv"
    base = {"us": 2.0, "bw_gbs": 1, "tflops": 0, "err": 0}
    tuned.write_rows("scratch", KEYS, [{**_row("ck", {}, n=64), **base}, {**_row("ck", {}, n=8), **base}], path)
    tuned.write_rows("scratch", KEYS, [{**_row("triton", {"BLOCK": 1}, n=64), **base}], path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["num_tokens"], r["backend"]) for r in rows] == [("8", "ck"), ("64", "triton")]


def test_tuner_writes_measured_rows_for_merge_state(tmp_path):
    """The tuner runs every available backend/config, checks it against the reference, and writes
    the fastest passing one (CPU interpreter timings: plumbing only, into a scratch file)."""
    from aiter_ext.core.tuner import tune

    untuned = tmp_path / "u.csv"
    untuned.write_text("num_tokens,num_heads,head_dim,dtype\n3,2,64,fp16\n")
    out = tmp_path / "t.csv"
    lines = []
    rows = tune("merge_state", untuned, out, backends=["triton"], allow_cpu=True, log=lines.append)
    assert len(rows) == 1 and rows[0]["backend"] == "triton" and float(rows[0]["err"]) <= 1.0
    from aiter_ext.ops.merge_state.backends import TRITON_TUNE_CONFIGS

    assert json.loads(rows[0]["config"]) in TRITON_TUNE_CONFIGS
    assert out.exists() and any("[1/1]" in line for line in lines)


def test_tuner_shards_and_check_only(tmp_path):
    """--shard K/N takes every N-th shape from the K-th; --check-only compiles and checks every candidate,
    times none and writes nothing (the kernel-cache warm-up that runs one process per shard)."""
    from aiter_ext.core.tuner import cli, tune

    untuned = tmp_path / "u.csv"
    untuned.write_text("num_tokens,num_heads,head_dim,dtype\n3,2,64,fp16\n5,2,64,fp16\n7,2,64,fp16\n")
    out = tmp_path / "t.csv"
    lines = []
    assert tune("merge_state", untuned, out, backends=["triton"], allow_cpu=True, log=lines.append, shard=(1, 2),
                check_only=True) == []
    assert not out.exists() and not any(" us," in line for line in lines)
    assert any("'num_tokens': 5" in line and "compiled, error" in line for line in lines)
    assert not any("'num_tokens': 3" in line or "'num_tokens': 7" in line for line in lines)
    rows = tune("merge_state", untuned, out, backends=["triton"], allow_cpu=True, log=lines.append, shard=(0, 2))
    assert [r["num_tokens"] for r in rows] == [3, 7]
    with pytest.raises(SystemExit):
        cli(["merge_state", "-i", str(untuned), "--shard", "2/2", "--allow-cpu"])


def test_tuner_rejects_a_wrong_kernel(tmp_path, monkeypatch):
    from aiter_ext.core.tuner import tune
    from aiter_ext.ops.merge_state.backends import MERGE_STATE

    impl = MERGE_STATE.impls["triton"]
    monkeypatch.setattr(impl, "fn", lambda cfg, va, sa, vb, sb, vo, so, m: (vo.copy_(va), so.copy_(sa)))
    untuned = tmp_path / "u.csv"
    untuned.write_text("num_tokens,num_heads,head_dim,dtype\n3,2,64,fp16\n")
    lines = []
    rows = tune("merge_state", untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert rows == [] and any("REJECTED" in line for line in lines)


@pytest.mark.parametrize("second_us, kept", [(9.8, {}), (9.0, {"BLOCK_R": 1, "num_warps": 4})])
def test_a_tile_takes_the_row_only_when_it_beats_the_heuristic_by_the_margin(tmp_path, monkeypatch, second_us, kept):
    """rmsnorm's candidates in order: the heuristic ({}) at 10 us, the next tile at ``second_us``, the rest at 20.
    2% faster keeps the heuristic (HEURISTIC_MARGIN is 3%); 10% faster takes the tile."""
    from aiter_ext.core import tuner
    from aiter_ext.ops.norm.backends import TRITON_TUNE_CONFIGS

    assert TRITON_TUNE_CONFIGS[:2] == [{}, {"BLOCK_R": 1, "num_warps": 4}]  # the order the times below follow
    times = iter([10.0, second_us] + [20.0] * (len(TRITON_TUNE_CONFIGS) - 2))
    monkeypatch.setattr(tuner, "_gpu_time_us", lambda run, on_gpu: next(times))
    untuned = tmp_path / "u.csv"
    untuned.write_text("num_rows,hidden,dtype\n5,96,fp16\n")
    lines = []
    rows = tuner.tune("rmsnorm", untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert [json.loads(r["config"]) for r in rows] == [kept], lines
    assert any("kept the heuristic" in line for line in lines) == (kept == {})
    assert sum("us," in line for line in lines) == len(TRITON_TUNE_CONFIGS)  # one per timed candidate, none besides


def test_exact_keys_keep_a_tuned_row_to_its_own_width(gpu_like, monkeypatch, tmp_path):
    """An op that lists a key as exact takes a row of another value of it as no row (rmsnorm's tiles are sized
    for a width, RoPE's for its heads and dim); the other keys still find their nearest row."""
    path = tmp_path / "scratch_tuned.csv"
    _write_csv(path, [_row("triton", {"BLOCK": 2}, n=4096, d=128)])
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(path))
    near = {**CALL, "num_tokens": 16}
    assert tuned.lookup("scratch", near, KEYS).config == {"BLOCK": 2}
    assert tuned.lookup("scratch", near, KEYS, exact_keys=("head_dim",)).config == {"BLOCK": 2}
    other_width = {**near, "head_dim": 256}
    assert tuned.lookup("scratch", other_width, KEYS).config == {"BLOCK": 2}  # nearest, without exact keys
    assert tuned.lookup("scratch", other_width, KEYS, exact_keys=("head_dim",)) is None
    from aiter_ext.core.backend import OPS

    assert OPS["rmsnorm"].exact_keys == ("hidden", "dtype")
    assert OPS["rope"].exact_keys == ("num_heads", "head_dim", "dtype")


@pytest.mark.parametrize("op, untuned_text", [
    ("rmsnorm", "num_rows,hidden,dtype\n5,96,fp16\n"),
    ("rope", "num_tokens,num_heads,head_dim,dtype,num_q_heads\n3,6,32,fp16,4\n"),
    ("paged_kv_append", "num_tokens,num_kv_heads,head_dim,dtype\n5,2,32,fp16\n"),
    ("softmax", "rows,vocab,dtype\n3,300,bf16\n"),
    ("renorm", "rows,vocab,dtype\n3,300,fp32\n"),
    ("merge_states", "num_tokens,num_heads,head_dim,dtype\n3,2,32,fp32\n"),
])
def test_tuner_writes_measured_rows_for_the_elementwise_ops(tmp_path, op, untuned_text):
    """The tune targets of rmsnorm, RoPE, the paged-KV append, softmax, renorm and merge_states: every config (the
    heuristic's included) checked against the reference and the fastest written (CPU interpreter: plumbing only)."""
    from aiter_ext.core.backend import OPS
    from aiter_ext.core.tuner import tune

    untuned = tmp_path / "u.csv"
    untuned.write_text(untuned_text)
    lines = []
    rows = tune(op, untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    configs = OPS[op].impls["triton"].configs
    assert len(rows) == 1 and float(rows[0]["err"]) <= 1.0, lines
    assert json.loads(rows[0]["config"]) in configs and {} in configs
    assert sum("us," in line for line in lines) == len(configs), lines  # every candidate timed


def test_arch_override(monkeypatch):
    from aiter_ext.core.arch import device_info

    monkeypatch.setenv("AITER_EXT_ARCH", "gfx950")
    monkeypatch.setenv("AITER_EXT_CU_NUM", "256")
    info = device_info()
    assert (info.arch, info.cu_num) == ("gfx950", 256)
    expected = "cuda" if torch.cuda.is_available() and not torch.version.hip else info.platform
    assert info.platform == expected


def test_tensor_device_decides_which_backends_can_run(gpu_like, monkeypatch, tmp_path):
    """Kernel backends need GPU tensors (Triton under the interpreter: CPU tensors); CPU tensors on a
    GPU machine go to the reference automatically, and an explicit kernel backend says why it cannot."""
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SCRATCH", str(tmp_path / "none.csv"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    op = _op()
    assert op.select({**CALL, "device": "cuda"}).impl.backend == "triton"
    assert op.select({**CALL, "device": "cpu"}).impl.backend == "torch"
    with pytest.raises(BackendUnavailableError, match="runs on GPU tensors here; these tensors are on cpu"):
        op.select({**CALL, "device": "cpu"}, "ck")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert op.select({**CALL, "device": "cpu"}, "triton").impl.backend == "triton"
    with pytest.raises(BackendUnavailableError, match="CPU tensors \\(the interpreter\\)"):
        op.select({**CALL, "device": "cuda"}, "triton")


def test_env_reads_follow_os_environ(monkeypatch):
    """core.env.env, the per-call environment read, answers as os.environ.get through every way a test or
    a user changes the environment."""
    from aiter_ext.core.env import env

    name = "AITER_EXT_TEST_ENV_PROBE"
    monkeypatch.delenv(name, raising=False)
    assert env(name) is None
    monkeypatch.setenv(name, "tr\u00edton")
    assert env(name) == os.environ.get(name) == "tr\u00edton"
    os.environ[name] = "x"
    assert env(name) == "x"
    del os.environ[name]
    assert env(name) is None


def test_env_reads_follow_every_change_to_the_environment(monkeypatch):
    """core.env caches reads until os.environ changes; every way of changing it is seen."""
    import os

    from aiter_ext.core.env import env

    name = "AITER_EXT_TEST_ENV_CACHE"
    monkeypatch.delenv(name, raising=False)
    assert env(name) is None
    monkeypatch.setenv(name, "a")
    assert env(name) == "a"
    os.environ[name] = "b"
    assert env(name) == "b"
    os.environ.update({name: "c"})
    assert env(name) == "c"
    os.environ.pop(name)
    assert env(name) is None
    os.environ.setdefault(name, "d")
    assert env(name) == "d"
    del os.environ[name]
    assert env(name) is None


def test_tuner_writes_measured_rows_for_attention(tmp_path, monkeypatch):
    """attention's tune target (ops/attention/tuning.py): each tile config plans the batch through the public
    wrapper, is checked against the torch backend's fp32 run (output and LSE), and the fastest written with
    the plan's keys (CPU interpreter: plumbing only, three of the candidates)."""
    from aiter_ext.core.backend import OPS
    from aiter_ext.core.tuner import tune

    impl = OPS["attention"].impls["triton"]
    assert {} in impl.configs and len(impl.configs) == 25
    picked = [{}, {"BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "prefetch_pages": True},
              {"BLOCK_N": 64, "num_warps": 2, "num_stages": 3, "prefetch_pages": False}]
    monkeypatch.setattr(impl, "configs", picked)
    untuned = tmp_path / "u.csv"
    untuned.write_text("num_qo_heads,num_kv_heads,head_dim,dtype,kv_dtype,packed_rows,kv_len,batch,qo_len,causal\n"
                       "4,2,64,fp16,fp16,8,40,2,3,1\n")
    lines = []
    rows = tune("attention", untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert len(rows) == 1 and float(rows[0]["err"]) <= 1.0, lines
    assert json.loads(rows[0]["config"]) in picked and sum("us," in line for line in lines) == 3, lines
    assert {k: rows[0][k] for k in ("packed_rows", "kv_len", "dtype", "kv_dtype")} == \
        {"packed_rows": 8, "kv_len": 40, "dtype": "fp16", "kv_dtype": "fp16"}
    untuned.write_text(untuned.read_text().replace(",8,40,", ",16,40,"))  # packed_rows that qo_len does not give
    with pytest.raises(ValueError, match="packed_rows must be 8"):  # a malformed shape list stops the tuner
        tune("attention", untuned, tmp_path / "t2.csv", backends=["triton"], allow_cpu=True, log=lines.append)


def test_a_tuned_attention_row_sets_the_tiles_of_its_own_tile_regime_only(tmp_path, monkeypatch):
    import aiter_ext
    from aiter_ext.core.arch import device_info
    from aiter_ext.core.backend import OPS
    from aiter_ext.ops.attention.backends import SHAPE_KEYS

    info = device_info()
    keys = {"num_qo_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "fp16", "kv_dtype": "fp16",
            "packed_rows": 2, "kv_len": 64}
    config = {"BLOCK_N": 32, "num_warps": 8, "num_stages": 2, "prefetch_pages": True}
    path = tmp_path / "attention_tuned.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["arch", "cu_num", *SHAPE_KEYS, "backend", "config", "us", "bw_gbs", "tflops",
                                    "err"])
        writer.writeheader()
        writer.writerow({"arch": info.arch, "cu_num": info.cu_num, **keys, "backend": "triton",
                         "config": json.dumps(config), "us": 1.0, "bw_gbs": 1.0, "tflops": 0.0, "err": 0})
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_ATTENTION", str(path))
    OPS["attention"].clear_cache()
    try:
        def planned(qo_len, kv_len):
            wrapper = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
            pages = -(-kv_len // 16)
            wrapper.plan(torch.tensor([0, qo_len], dtype=torch.int32), torch.tensor([0, pages], dtype=torch.int32),
                         torch.arange(pages, dtype=torch.int32), torch.tensor([kv_len - 16 * (pages - 1)],
                                                                               dtype=torch.int32),
                         4, 2, 64, 16, q_data_type=torch.float16)
            return wrapper.attention_plan.work

        decode = planned(1, 300)  # packed rows 2, another kv_len: the row's (its nearest)
        assert (decode.block_n, decode.num_warps, decode.num_stages, decode.prefetch_pages) == (32, 8, 2, True)
        prefill = planned(40, 300)  # packed rows 80 -> 128: another regime, the heuristic's
        assert (prefill.num_warps, prefill.num_stages) != (8, 2)
    finally:
        OPS["attention"].clear_cache()


def test_a_stopped_tune_keeps_the_rows_measured_before(tmp_path, monkeypatch):
    """A lent GPU call's time limit stops the tuner with SIGINT: the shapes done by then are written."""
    from aiter_ext.core import tuner

    real = tuner.TUNE_TARGETS["merge_state"]
    cases = []

    def stopping(shape, device):
        if cases:
            raise KeyboardInterrupt
        cases.append(shape)
        return real(shape, device)

    monkeypatch.setitem(tuner.TUNE_TARGETS, "merge_state", stopping)
    untuned = tmp_path / "u.csv"
    untuned.write_text("num_tokens,num_heads,head_dim,dtype\n3,2,64,fp16\n5,2,64,fp16\n")
    out, lines = tmp_path / "t.csv", []
    with pytest.raises(KeyboardInterrupt):
        tuner.tune("merge_state", untuned, out, backends=["triton"], allow_cpu=True, log=lines.append)
    written = list(csv.DictReader(open(out)))
    assert [int(r["num_tokens"]) for r in written] == [3] and any("wrote 1 rows" in line for line in lines)


def test_the_readme_names_every_tunable_op():
    import re

    import aiter_ext.ops
    from aiter_ext.core.tuner import TUNE_TARGETS

    aiter_ext.ops.load_kernel_modules()
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    listed = re.search(r"tunable: ([^)]*)\)", readme).group(1)
    assert set(re.findall(r"`(\w+)`", listed)) == set(TUNE_TARGETS)
