"""Packaging (issue 13): the data an installed package needs, found wherever it is installed, loud
when missing; the wheel carries it; no op needs Triton to run on a machine without a GPU."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aiter_ext.core import data, tuned

REPO = Path(__file__).resolve().parents[1]


def test_data_root_order(tmp_path, monkeypatch):
    """AITER_EXT_ROOT, then the package's _data folder, then the checkout around the package."""
    package = tmp_path / "site" / "aiter_ext"
    (package / "_data").mkdir(parents=True)
    monkeypatch.setattr(data, "_package_dir", lambda: package)
    monkeypatch.delenv("AITER_EXT_ROOT", raising=False)
    assert data.find_data_root() == package / "_data"  # nothing anywhere: the shipped place, reported missing
    assert "MISSING" in data.describe(package / "_data")
    (tmp_path / "site" / data.MARKER).write_text("features: []\n")
    assert data.find_data_root() == tmp_path / "site"  # a checkout around the package
    (package / "_data" / data.MARKER).write_text("features: []\n")
    assert data.find_data_root() == package / "_data"  # the shipped copy wins over a checkout
    monkeypatch.setenv("AITER_EXT_ROOT", str(tmp_path / "elsewhere"))
    assert data.find_data_root() == tmp_path / "elsewhere"


def test_missing_data_is_loud(tmp_path, monkeypatch, caplog):
    with pytest.raises(FileNotFoundError, match=r"feature matrix .* is missing: .*reinstall aiter-ext"):
        data.data_path(tmp_path, "gap_matrix.yaml", what="feature matrix (gap_matrix.yaml)")
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "configs" / "tuned_csv")
    from aiter_ext.core import log

    monkeypatch.setattr(log, "_seen", set())
    with caplog.at_level(logging.WARNING, logger="aiter_ext"):
        assert tuned.load_rows("merge_state") == ()
    assert "tuned tables are missing" in caplog.text


def test_the_wheel_carries_the_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("aiter_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("aiter_ext/_data/gap_matrix.yaml", "aiter_ext/_data/configs/tuned_csv/merge_state_tuned.csv",
                   "aiter_ext/_data/csrc/ck_kernels/modules.json", "aiter_ext/_data/hsa/README.md",
                   "aiter_ext/_data/op_tests/test_sampling.py", "aiter_ext/py.typed"):
        assert needed in names, needed
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)


_NO_TRITON = """
import sys
sys.modules["triton"] = None  # as if not installed: import fails, find_spec gives None
import torch, aiter_ext
from aiter_ext.core.backend import backend_status
assert not backend_status("triton")[0]
probs = torch.softmax(torch.randn(2, 50), -1)
tokens = aiter_ext.top_k_sampling_from_probs(probs, 1)
assert tokens.tolist() == probs.argmax(-1).tolist(), tokens
aiter_ext.softmax(torch.randn(2, 50), 0.5)
aiter_ext.rmsnorm(torch.randn(2, 64), torch.ones(64))
aiter_ext.merge_state(torch.randn(3, 2, 8), torch.randn(3, 2), torch.randn(3, 2, 8), torch.randn(3, 2))
assert sys.modules["triton"] is None
print("ok")
"""


def test_every_op_runs_without_triton_on_a_cpu():
    """One rule for every op on a machine without a GPU: its torch backend runs when Triton is absent."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", _NO_TRITON], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
