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
