"""Torch custom ops for functions that only write into their arguments, so that ``torch.compile``
(fullgraph) traces through the ops' launchers.

Every op's ``api.py`` has the same need: register a few ``*_out`` / in-place functions as custom ops
that declare what they mutate, with fake implementations that do nothing (they return nothing), and
call them through that layer only while tracing (in eager mode it is only Python overhead).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch


def mutating_ops(ops: Mapping[Callable, tuple[str, tuple[str, ...]]]) -> Callable[..., None]:
    """Register ``{fn: (name, mutated argument names)}`` as ``aiter_ext::<name>`` custom ops and return
    ``call(fn, *args)``, which runs ``fn`` through its custom op while torch.compile traces and
    directly otherwise. The functions must return None."""
    registered = {}
    for fn, (name, mutates) in ops.items():
        op = torch.library.custom_op(f"aiter_ext::{name}", fn, mutates_args=mutates)
        op.register_fake(lambda *args, **kwargs: None)
        registered[fn] = op

    def call(fn: Callable, *args) -> None:
        (registered[fn] if torch.compiler.is_compiling() else fn)(*args)

    return call
