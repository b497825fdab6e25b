"""Set-up of the serving frameworks' contract tests (issue 15), imported first by each test module (not
a conftest.py: op_tests' modules import their own ``conftest`` by name). The tests run in the environment
.ci/serving_env.sh builds (vLLM 0.33.0, SGLang 0.5.23, torch 2.14.1, CPU only) and skip elsewhere.

A CPU host is made to look like one MI300X: ``stubs/amdsmi.py`` answers vLLM's platform probe (so
``current_platform`` is ROCm, as vLLM itself decides), and ``torch.cuda.get_device_properties`` returns a
gfx942 device (vLLM's ROCm modules read ``gcnArchName`` at import).
"""

import importlib.util
import os
import sys
import types

import pytest
import torch

if importlib.util.find_spec("vllm") is not None:  # only in the serving environment: elsewhere, touch nothing
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stubs"))
    _GFX942 = types.SimpleNamespace(gcnArchName="gfx942:sramecc+:xnack-", major=9, minor=4,
                                    name="AMD Instinct MI300X", total_memory=192 << 30, multi_processor_count=304)
    torch.cuda.get_device_properties = lambda *args, **kwargs: _GFX942


@pytest.fixture(scope="session")
def vllm():
    vllm = pytest.importorskip("vllm", reason="the serving contract environment (.ci/serving_env.sh) has vLLM")
    assert vllm.__version__ == "0.33.0", f"the contract is written against vLLM 0.33.0, found {vllm.__version__}"
    return vllm


@pytest.fixture(scope="session")
def sglang():
    sglang = pytest.importorskip("sglang", reason="the serving contract environment (.ci/serving_env.sh) has SGLang")
    assert sglang.__version__ == "0.5.23", f"the contract is written against SGLang 0.5.23, found {sglang.__version__}"
    return sglang


def last_line_in_fresh_process(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter with ``env`` added (as vLLM's workers start: plugins loaded from
    scratch, environment flags read once) and return the last line it prints."""
    import subprocess

    here = os.path.dirname(__file__)
    env = {**os.environ, **env, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=here)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def assert_vllm_flag_switches(flag: str, imports: str, installed: str) -> None:
    """With ``flag=1`` the vLLM plugin's register() installs what ``installed`` (an expression, after
    ``imports``) checks, and with ``flag=0`` it does not: each in a fresh process, as vLLM's workers start."""
    code = (f"import serving_setup; from aiter_ext.integrations import vllm as plugin; plugin.register(); {imports}; "
            f"print(bool({installed}))")
    for value, expected in (("1", "True"), ("0", "False")):
        assert last_line_in_fresh_process(code, **{flag: value}) == expected, f"{flag}={value}"
