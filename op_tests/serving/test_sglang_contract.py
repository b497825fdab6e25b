"""aiter_ext's SGLang plugin against SGLang 0.5.23 itself (issue 15; serving-integration.md, section 7).
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere."""

from importlib.metadata import entry_points

from serving_setup import sglang  # noqa: F401  (the fixture; importing it also fakes the MI300X)


def test_load_plugins_registers_the_backend_and_its_cli_choice(sglang):
    names = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert names.get("aiter_ext") == "aiter_ext.integrations.sglang:register"
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
    from sglang.srt.layers.attention.aiter_backend import AiterAttnBackend
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins import load_plugins

    load_plugins()
    load_plugins()  # idempotent
    assert "aiter_ext" in ATTENTION_BACKENDS and "aiter_ext" in ATTENTION_BACKEND_CHOICES
    assert ATTENTION_BACKEND_CHOICES.count("aiter_ext") == 1
    from aiter_ext.integrations.sglang.backend import AiterExtAttnBackend

    assert issubclass(AiterExtAttnBackend, AiterAttnBackend)


def test_the_cli_parses_the_backend(sglang):
    import argparse

    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    load_plugins()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", "dummy", "--attention-backend", "aiter_ext"])
    assert args.attention_backend == "aiter_ext"
