"""vLLM and SGLang plugins (shared/reference/serving-integration.md; issue 15).

So far only the framework-free part: ``prefix`` (shared-prefix detection and the cascade decision that
the metadata builders will call). The entry points (``vllm.general_plugins``, ``sglang.srt.plugins``) are
declared in pyproject.toml together with the backends they register, not before.
"""
