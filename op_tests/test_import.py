"""`import aiter_ext` needs only torch: no Triton, no AITER (whose import needs ROCm), no GPU."""

import subprocess
import sys
import textwrap


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_import_loads_neither_triton_nor_aiter(tmp_path):
    proc = _run("""
        import sys
        import aiter_ext
        assert callable(aiter_ext.merge_state)
        assert "aiter" not in sys.modules, "aiter_ext imported aiter"
        assert "triton" not in sys.modules, "aiter_ext imported triton at import time"
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_aiter_backend_reports_a_failing_aiter_import(tmp_path, monkeypatch):
    """On ROCm with an AITER that fails to import (as it does without a ROCm install), the aiter
    backend is unavailable with the import's own message; nothing raises."""
    from aiter_ext.core import backend
    from aiter_ext.core.arch import DeviceInfo

    fake = tmp_path / "aiter"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("ROCm version file not found")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backend, "device_info", lambda: DeviceInfo("gfx942", 304, "rocm", "fake MI300X"))
    backend._cached_status.cache_clear()
    try:
        ok, reason = backend.backend_status("aiter")
    finally:
        backend._cached_status.cache_clear()
    assert not ok and "ROCm version file not found" in reason


def test_backend_triton_everywhere_runs_the_interpreter_without_a_gpu(tmp_path):
    """AITER_EXT_BACKEND=triton on a GPU-less machine runs every op on Triton, through the interpreter."""
    import os

    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: Triton runs compiled there")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["AITER_EXT_BACKEND"] = "triton"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import torch, aiter_ext
        from aiter_ext.ops.merge_state.backends import MERGE_STATE
        from aiter_ext.ops.merge_state.reference import merge_state_ref
        v_a, v_b = torch.randn(2, 3, 2, 64, dtype=torch.float16)
        s_a, s_b = torch.randn(2, 3, 2)
        v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b)
        call = {"num_tokens": 3, "num_heads": 2, "head_dim": 64, "dtype": "fp16", "has_mask": False,
                "contiguous": True, "aligned16": True}
        choice = MERGE_STATE.select(call)
        assert (choice.impl.backend, choice.how) == ("triton", "environment"), choice
        torch.testing.assert_close(v, merge_state_ref(v_a, s_a, v_b, s_b)[0], atol=1e-3, rtol=1e-3)
        print("ok")
    """)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
