"""vLLM and SGLang plugins (shared/reference/serving-integration.md).

Empty for now: the entry points (`vllm.general_plugins`, `sglang.srt.plugins`) are declared in
pyproject.toml together with the first feature they route (cascade attention, sampling), not before.
"""
