"""The LogitsPipe (FlashInfer's ``flashinfer.logits_processor``): a typed chain of processors that can
be fused into fewer launches.

    pipe = LogitsPipe([Temperature(), Softmax(), TopK(), TopP(), Sample()])
    tokens = pipe(logits, temperature=0.7, top_k=50, top_p=0.9)

Typing:
- every processor accepts LOGITS or PROBS and returns LOGITS, PROBS or INDICES;
- a processor given a type it does not accept is a ``TypeError`` at construction, naming both;
- the input type is inferred from the first processor, and must be given (``input_type=``) when that
  processor accepts both;
- nothing may follow Sample, and there is at most one Softmax.

Runtime keywords (``temperature``, ``top_k``, ``top_p``, ``min_p``) are taken by the first processor that
uses them; later ones fall back to their constructor values. ``indices``, ``generator``, ``seed`` and
``offset`` go to Sample (or come from its constructor: ``Sample(indices=...)``, as FlashInfer allows).

Against FlashInfer 0.7.2:
- Processors take FlashInfer's constructor keywords (``TopK(top_k=50, joint_topk_topp=True)``,
  ``Softmax(enable_pdl=...)``, ``Sample(deterministic=..., indices=..., generator=...)``); an unknown
  keyword is a ``TypeError`` here (FlashInfer stores it unused).
- A runtime keyword that some processor could take but none of this pipe's does (``top_k=`` to a pipe
  without TopK, ``is_deterministic=``) is ignored, as in FlashInfer; a name no processor knows is a
  ``TypeError`` (FlashInfer ignores it too, which hides misspellings).
- ``Temperature`` accepts 0 (greedy rows, below); FlashInfer requires a positive float scalar.
- ``seed``/``offset`` reach Sample here; FlashInfer's pipe draws from the generator only.
- ``custom_fusion_rules`` / ``custom_validity_checks`` are not supported (a ``ValueError``).
- Errors raised while running are the functions' own, not wrapped in FlashInfer's "Error executing
  operator" ``ValueError``.

``compile=True`` fuses neighbours greedily, by priority:
- Temperature+Softmax becomes one ``softmax(logits, temperature)``;
- on probabilities, TopK(joint_topk_topp=True)+TopP+Sample becomes the joint sampler;
- on probabilities, TopK+Sample, TopP+Sample and MinP+Sample become the fused samplers.
The fused pipe draws from the same distribution as the unfused one.

A Temperature of 0 makes its rows greedy in both forms: fused, the softmax writes a one-hot row;
unfused, every logit but the first maximum becomes -inf.
"""

from __future__ import annotations

import enum
from typing import Optional

import torch

from . import api, logits, renorm
from .inputs import threshold


class TensorType(enum.Enum):
    LOGITS = "logits"
    PROBS = "probs"
    INDICES = "indices"


L, P, I = TensorType.LOGITS, TensorType.PROBS, TensorType.INDICES


#: Every runtime keyword some processor reads: the pipe ignores these when unused (as FlashInfer does).
RUNTIME_KEYWORDS = frozenset({"temperature", "top_k", "top_p", "min_p", "indices", "generator", "seed", "offset",
                              "is_deterministic"})


class Processor:
    """One step. ``param``: the runtime keyword it reads (None: none); ``default``: the constructor value;
    ``options``: the other constructor keywords it takes (FlashInfer's ``**params``), kept in ``params``."""

    param: Optional[str] = None
    options: tuple = ()
    types: dict = {}  # accepted input type -> output type

    def __init__(self, default=None, **params):
        unknown = sorted(set(params) - set(self.options))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown keyword(s) {unknown}; it takes "
                            f"{[k for k in (self.param, *self.options) if k]}")
        self.default = default
        self.params = params

    def output_type(self, in_type: TensorType) -> TensorType:
        if in_type not in self.types:
            accepted = " or ".join(t.name for t in self.types)
            raise TypeError(f"{type(self).__name__} takes {accepted}, but the pipe gives it {in_type.name}")
        return self.types[in_type]

    def value(self, kwargs: dict):
        """The runtime keyword if still unclaimed (claiming it), else the constructor value."""
        if self.param is not None and self.param in kwargs:
            return kwargs.pop(self.param)
        if self.default is None and self.param is not None:
            raise ValueError(f"{type(self).__name__} needs {self.param}=: pass it to the pipe call or the constructor")
        return self.default

    def run(self, x, in_type, kwargs):
        raise NotImplementedError


class Temperature(Processor):
    param, types = "temperature", {L: L}

    def __init__(self, temperature=None, **params):
        super().__init__(temperature, **params)

    def run(self, x, in_type, kwargs):
        t = self.value(kwargs)
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1, 1)
        greedy = t == 0
        first_max = torch.zeros_like(x, dtype=torch.bool).scatter_(1, x.argmax(-1, keepdim=True), True)
        greedy_row = torch.where(first_max, torch.zeros_like(x), torch.full_like(x, float("-inf")))
        return torch.where(greedy, greedy_row, x / torch.where(greedy, torch.ones_like(t), t).to(x.dtype))


class Softmax(Processor):
    options, types = ("enable_pdl",), {L: P}

    def __init__(self, enable_pdl: Optional[bool] = None, **params):
        super().__init__(None, enable_pdl=enable_pdl, **params)

    def run(self, x, in_type, kwargs):
        return logits.softmax(x)


class TopK(Processor):
    param, types = "top_k", {L: L, P: P}

    def __init__(self, top_k=None, joint_topk_topp: bool = False, **params):
        super().__init__(top_k, **params)
        self.joint_topk_topp = joint_topk_topp

    def run(self, x, in_type, kwargs):
        k = self.value(kwargs)
        return renorm.top_k_mask_logits(x, k) if in_type is L else renorm.top_k_renorm_probs(x, k)


class TopP(Processor):
    param, types = "top_p", {P: P}

    options = ("is_deterministic",)

    def __init__(self, top_p=None, **params):
        super().__init__(top_p, **params)

    def run(self, x, in_type, kwargs):
        return renorm.top_p_renorm_probs(x, self.value(kwargs))


class MinP(Processor):
    param, types = "min_p", {P: P}

    def __init__(self, min_p=None, **params):
        super().__init__(min_p, **params)

    def run(self, x, in_type, kwargs):
        """min-p renormalisation in torch (FlashInfer's pipe does the same); a tensor's values are
        clamped as the fused kernel clamps them (kernels.min_p_of)."""
        value = self.value(kwargs)
        threshold("min_p", value, x.shape[0], x.device, "unit")  # the samplers' checks and messages
        m = torch.as_tensor(value, device=x.device).float().nan_to_num(0.0).clamp(0.0, 1.0).reshape(-1, 1)
        kept = torch.where((x >= m * x.max(-1, keepdim=True).values) & (x > 0), x, torch.zeros_like(x))
        total = kept.sum(-1, keepdim=True)
        return kept / torch.where(total > 0, total, torch.ones_like(total))


SAMPLE_KEYWORDS = ("indices", "generator", "seed", "offset")


class Sample(Processor):
    options, types = SAMPLE_KEYWORDS, {L: I, P: I}

    def __init__(self, deterministic: bool = True, **params):
        super().__init__(None, **params)
        self.deterministic = deterministic

    def run(self, x, in_type, kwargs):
        fn = logits.sampling_from_logits if in_type is L else api.sampling_from_probs
        return fn(x, **_sample_kwargs(kwargs, self))


def _sample_kwargs(kwargs: dict, sample: "Sample") -> dict:
    """Sample's keywords: the runtime ones, else its constructor's (FlashInfer's ``Sample(indices=...)``)."""
    found = {k: kwargs.pop(k) for k in SAMPLE_KEYWORDS if k in kwargs}
    return {**{k: v for k, v in sample.params.items() if v is not None}, **found}


class _Fused:
    """A fused stage: ``ops`` are the processors it replaces (their parameters are read in order)."""

    def __init__(self, name, ops, fn):
        self.name, self.ops, self.fn = name, ops, fn

    def run(self, x, in_type, kwargs):
        return self.fn(x, kwargs)


def _fusions(ops: list, types: list):
    """Greedy fusion by priority (100 first, then 10) over the typed sequence; returns the stages."""

    def temp_softmax(t_op):
        return lambda x, kw: logits.softmax(x, t_op.value(kw))

    def sampler(filter_op, sample_op, fn):
        return lambda x, kw: fn(x, filter_op.value(kw), **_sample_kwargs(kw, sample_op))

    stages, i = [], 0
    while i < len(ops):
        op, in_type = ops[i], types[i]
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        nxt2 = ops[i + 2] if i + 2 < len(ops) else None
        if isinstance(op, Temperature) and isinstance(nxt, Softmax):
            stages.append((_Fused("softmax(temperature)", [op, nxt], temp_softmax(op)), in_type))
            i += 2
        elif (in_type is P and isinstance(op, TopK) and op.joint_topk_topp and isinstance(nxt, TopP)
              and isinstance(nxt2, Sample)):
            k_op, p_op, s_op = op, nxt, nxt2
            fn = lambda x, kw, k_op=k_op, p_op=p_op, s_op=s_op: api.top_k_top_p_sampling_from_probs(  # noqa: E731
                x, k_op.value(kw), p_op.value(kw), filter_apply_order="joint", **_sample_kwargs(kw, s_op))
            stages.append((_Fused("top_k_top_p_sampling_from_probs(joint)", [op, nxt, nxt2], fn), in_type))
            i += 3
        elif in_type is P and isinstance(nxt, Sample) and isinstance(op, (TopK, TopP, MinP)):
            fn = {TopK: api.top_k_sampling_from_probs, TopP: api.top_p_sampling_from_probs,
                  MinP: api.min_p_sampling_from_probs}[type(op)]
            stages.append((_Fused(fn.__name__, [op, nxt], sampler(op, nxt, fn)), in_type))
            i += 2
        else:
            stages.append((op, in_type))
            i += 1
    return stages


class LogitsPipe:
    def __init__(self, processors: list, compile: bool = True, input_type: Optional[TensorType] = None,
                 custom_fusion_rules=None, custom_validity_checks=None):
        if not processors:
            raise ValueError("LogitsPipe needs at least one processor")
        if custom_fusion_rules or custom_validity_checks:
            raise ValueError("custom_fusion_rules / custom_validity_checks are not supported")
        for p in processors:
            if not isinstance(p, Processor):
                raise TypeError(f"LogitsPipe processors must be processor instances, got {p!r}")
        first = processors[0]
        if input_type is None:
            if len(first.types) > 1:
                raise ValueError(f"{type(first).__name__} accepts both logits and probabilities: pass "
                                 "input_type=TensorType.LOGITS or TensorType.PROBS")
            input_type = next(iter(first.types))
        if sum(isinstance(p, Softmax) for p in processors) > 1:
            raise ValueError("a LogitsPipe may hold at most one Softmax")
        types, t = [], input_type
        for p in processors:
            if t is I:
                raise ValueError(f"nothing may follow Sample, found {type(p).__name__} after it")
            types.append(t)
            t = p.output_type(t)
        self.processors, self.input_type, self.output_type = list(processors), input_type, t
        self.stages = _fusions(self.processors, types) if compile else list(zip(self.processors, types))

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        kwargs = dict(kwargs)
        for stage, in_type in self.stages:
            x = stage.run(x, in_type, kwargs)
        unknown = sorted(set(kwargs) - RUNTIME_KEYWORDS)
        if unknown:  # known keywords this pipe has no processor for are ignored, as in FlashInfer
            raise TypeError(f"LogitsPipe got keywords no processor takes: {unknown}; runtime keywords are "
                            f"{sorted(RUNTIME_KEYWORDS)}")
        return x

    def __repr__(self) -> str:
        names = [s.name if isinstance(s, _Fused) else type(s).__name__ for s, _ in self.stages]
        return f"LogitsPipe({' -> '.join(names)}; {self.input_type.name} -> {self.output_type.name})"
