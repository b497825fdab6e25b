"""AITER_EXT_TEST_SHARD=k/n (the root conftest.py): n shards of a test file hold each of its tests exactly once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "op_tests/test_attention_masks.py"  # a file of a few dozen parametrized tests, collected in ~1 s


def _collected(shard: str | None) -> tuple[int, list[str], str]:
    env = {k: v for k, v in os.environ.items() if k != "AITER_EXT_TEST_SHARD"}
    if shard is not None:
        env["AITER_EXT_TEST_SHARD"] = shard
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", TARGET],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, [line for line in done.stdout.splitlines() if "::" in line], done.stderr


def test_shards_split_a_file_into_disjoint_parts_that_cover_it():
    rc, everything, _ = _collected(None)
    assert rc == 0 and len(everything) > 6
    parts = []
    for k in range(3):
        rc, part, _ = _collected(f"{k}/3")
        assert rc == 0 and part, f"shard {k}/3 collected nothing"
        parts.append(part)
    assert sorted(sum(parts, [])) == sorted(everything)  # every test once: none lost, none twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # round robin: the shards are even


@pytest.mark.parametrize("shard", ["3/3", "a/b"])
def test_a_bad_shard_is_a_usage_error_that_names_the_variable(shard):
    rc, _, err = _collected(shard)
    assert rc == 4 and "AITER_EXT_TEST_SHARD" in err  # pytest's usage error, before any test runs
