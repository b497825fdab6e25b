"""What every attention wrapper shares: checked plan-time metadata, the work plan, and one ``run``.

A wrapper's ``plan()`` builds an :class:`AttentionPlan` (host-side checks and lengths, device
metadata, the work list, the workspace views); its ``run()`` calls :meth:`AttentionPlan.run`, which
checks only tensor metadata and launches: no host synchronization, no data-dependent allocation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import weakref
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.custom_ops import mutating_ops
from aiter_ext.core.checks import check_indptr_values, check_same_device, check_shape, check_tensor, dtype_name

from .backends import ATTENTION, PARTIAL_STATE_RUNNERS
from .reference import alibi_slopes
from .plan import WorkPlan, make_plan, rotate_keys_ahead
from .tuning import packed_rows_bucket


#: FlashInfer's in-kernel position encodings.
POS_ENCODINGS = ("NONE", "ROPE_LLAMA", "ALIBI")

#: Warps of the custom-mask launches off NVIDIA (see AttentionPlan.build).
MASK_WARPS_AMD = 8  # custom masks and in-kernel RoPE off NVIDIA (see their uses)

KV_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz)
DTYPE_BY_NAME = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn,
                 "float8_e4m3fnuz": torch.float8_e4m3fnuz}


def host_scale(name: str, value, tensor_ok: bool = False):
    """A run's q/k/v scale (FlashInfer's fp8 dequantization factors) as a float, 1.0 for None. q and k
    scales must be real numbers: they scale the scores inside the kernel, which takes a scalar, and
    reading a device tensor would be a host sync. ``tensor_ok`` (v_scale, which multiplies the output
    after the kernel): a one-element float tensor is also taken, as is."""
    if value is None:
        return 1.0
    if tensor_ok and isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        what = "a real number, a one-element float tensor" if tensor_ok else "a real number"
        raise TypeError(f"{name} must be {what} or None (a tensor score scale would need a host sync), got "
                        f"{type(value).__name__}" + (f" of {value.numel()} elements" if isinstance(value, torch.Tensor)
                                                     else ""))
    return float(value)


def as_dtype(value, name: str) -> torch.dtype:
    """FlashInfer accepts dtypes or their names (``q_data_type="float16"``)."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value in DTYPE_BY_NAME:
        return DTYPE_BY_NAME[value]
    raise TypeError(f"{name} must be a torch dtype or one of {sorted(DTYPE_BY_NAME)}, got {value!r}")


def _packed_mask(custom_mask, packed_custom_mask, qo_lens, kv_lens, device):
    """``(packed uint8 on device, byte offsets int32 [batch + 1])`` of FlashInfer's custom masks, or
    None. Sizes are checked against the lengths plan() read, so the kernel never reads past the mask."""
    from .masks import segment_packbits

    if custom_mask is None and packed_custom_mask is None:
        return None
    sizes = [q * k for q, k in zip(qo_lens, kv_lens)]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + (n + 7) // 8)
    if packed_custom_mask is None:  # FlashInfer: the packed form wins when both are given
        check_tensor("custom_mask", custom_mask, ndim=1, dtypes=(torch.bool, torch.uint8, torch.int8))
        if custom_mask.shape[0] != sum(sizes):
            raise ValueError(f"custom_mask must hold sum(qo_len * kv_len) = {sum(sizes)} elements (each request's "
                             f"[qo_len, kv_len] mask flattened), got {custom_mask.shape[0]}")
        qk_indptr = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
        packed_custom_mask, _ = segment_packbits(custom_mask, qk_indptr, bitorder="little")
    check_tensor("packed_custom_mask", packed_custom_mask, ndim=1, dtypes=(torch.uint8,))
    if packed_custom_mask.shape[0] != offsets[-1]:
        raise ValueError(f"packed_custom_mask must hold sum(ceil(qo_len * kv_len / 8)) = {offsets[-1]} bytes "
                         f"(segment_packbits(..., bitorder='little')), got {packed_custom_mask.shape[0]}")
    return packed_custom_mask.to(device).contiguous(), torch.tensor(offsets, dtype=torch.int32)


def check_unsupported(pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, rope_scale=None,
                      rope_theta=None) -> None:
    """FlashInfer's position-encoding options, checked: a mode this engine lacks, or RoPE parameters
    without in-kernel RoPE, is refused, never silently ignored."""
    if pos_encoding_mode not in POS_ENCODINGS:
        raise ValueError(f"pos_encoding_mode must be one of {POS_ENCODINGS}, got {pos_encoding_mode!r}")
    if pos_encoding_mode != "ROPE_LLAMA" and (rope_scale is not None or rope_theta is not None):
        raise ValueError("rope_scale / rope_theta apply only with pos_encoding_mode='ROPE_LLAMA'")
    del use_fp16_qk_reduction  # a precision hint: the engine always accumulates in fp32


def host_int32(name: str, t: torch.Tensor, ndim: int = 1) -> list[int]:
    check_tensor(name, t, ndim=ndim, dtypes=(torch.int32, torch.int64))
    return t.tolist()


class RopePlan(NamedTuple):
    """What a backend's prepare() needs for ROPE_LLAMA: (rope_scale, rope_theta), the shapes, the host
    kv_indptr, and whether q and the keys are rotated ahead of the kernel (plan.rotate_keys_ahead)."""

    params: tuple
    head_dim: int
    num_qo_heads: int
    num_kv_heads: int
    dtype: torch.dtype
    kv_indptr: list
    ahead: bool
    q_ahead: bool = True  # with ahead: q rotated ahead too (else in the kernel's tiles; config rope_q_ahead)


@dataclass
class AttentionPlan:
    """Everything ``run()`` needs, fixed at ``plan()``."""

    paged: bool
    page_size: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    causal: bool
    sm_scale: float
    window_left: int
    logits_soft_cap: Optional[float]
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: Optional[torch.Tensor]
    kv_last_page_len: Optional[torch.Tensor]
    total_q: int
    total_kv: int  # ragged: kv_indptr[-1], the K/V rows run() must be given (checked there)
    max_page: int  # largest page id in the table (-1: none), checked against the cache in run()
    meta: torch.Tensor  # int32 qo_indptr | kv_indptr | kv_last_page_len: the kernel's request table
    work: WorkPlan
    partial_o: Optional[torch.Tensor]
    partial_lse: Optional[torch.Tensor]
    backend: str
    extra: dict  # what the chosen backend's prepare() built for its run()
    #: custom masks (masks.py): packed bits, little order, each request's on its own bytes; their byte
    #: offsets follow the request tables in ``meta``. None: no custom mask.
    custom_mask: Optional[torch.Tensor] = None
    qo_lens: tuple = ()  # host copies, for the reference backend and checks
    kv_lens: tuple = ()
    mask_offsets: tuple = ()  # each request's first byte in custom_mask (host copy)
    #: ALiBi slopes, fp32 [Hq] on the device (pos_encoding_mode="ALIBI"), else None
    alibi: Optional[torch.Tensor] = None
    #: in-kernel Llama RoPE (pos_encoding_mode="ROPE_LLAMA"): (rope_scale, rope_theta), else None
    rope: Optional[tuple] = None
    #: the wrapper slot this plan is bound to (bind_plan), by which a torch.compile'd run finds it; -1: none
    slot: int = -1

    @classmethod
    def build(cls, *, paged, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, num_qo_heads, num_kv_heads,
              head_dim, page_size, causal, sm_scale, window_left, logits_soft_cap, q_data_type, kv_data_type,
              workspace: torch.Tensor, backend: Optional[str], config: Optional[dict] = None,
              custom_mask=None, packed_custom_mask=None, pos_encoding_mode: str = "NONE", rope_scale=None,
              rope_theta=None) -> "AttentionPlan":
        """``custom_mask`` (bool, every request's ``[qo_len, kv_len]`` flattened and concatenated) or
        ``packed_custom_mask`` (uint8, as masks.segment_packbits(..., bitorder="little") packs it):
        FlashInfer's custom masks; with one, ``causal`` is ignored, as in FlashInfer. ``pos_encoding_mode``
        "ALIBI" adds FlashInfer's ALiBi bias (reference.alibi_slopes by head); "ROPE_LLAMA" rotates q and
        k in the kernel (rotate-half, ``rope_scale`` default 1, ``rope_theta`` default 1e4; query i of a
        request at position kv_len - qo_len + i, key j at j), as FlashInfer does."""
        check_unsupported(pos_encoding_mode, rope_scale=rope_scale, rope_theta=rope_theta)
        if pos_encoding_mode == "ALIBI" and logits_soft_cap:
            raise ValueError("ALiBi with logits_soft_cap is not supported (FlashInfer scales such scores twice)")
        if num_qo_heads <= 0 or num_kv_heads <= 0 or num_qo_heads % num_kv_heads:
            raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of num_kv_heads "
                             f"({num_kv_heads})")
        if head_dim <= 0:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        q_dtype = as_dtype(q_data_type, "q_data_type")
        kv_dtype = as_dtype(kv_data_type if kv_data_type is not None else q_dtype, "kv_data_type")
        qo = host_int32("qo_indptr", qo_indptr)
        kv = host_int32("kv_indptr" if not paged else "paged_kv_indptr", kv_indptr)
        if len(qo) < 2 or len(qo) != len(kv):
            raise ValueError(f"qo_indptr and kv_indptr must both have batch_size + 1 >= 2 entries, got "
                             f"{len(qo)} and {len(kv)}")
        check_indptr_values("qo_indptr", qo)
        if paged:
            from aiter_ext.ops.paged_kv import check_paged_kv_indices

            # plan() never sees the cache, so ids are checked against the cache's page count in run()
            # (metadata only); here: the table's shape, order, last_page_len and no negative ids.
            check_paged_kv_indices(kv_indptr, kv_indices, kv_last_page_len, page_size, num_pages=None)
            max_page = int(kv_indices.max()) if kv_indices.numel() else -1
            last = kv_last_page_len.tolist()
            kv_lens = [(kv[b + 1] - kv[b] - 1) * page_size + last[b] if kv[b + 1] > kv[b] else 0
                       for b in range(len(kv) - 1)]
        else:
            check_indptr_values("kv_indptr", kv)
            kv_lens = [kv[b + 1] - kv[b] for b in range(len(kv) - 1)]
            max_page = -1
        qo_lens = [qo[b + 1] - qo[b] for b in range(len(qo) - 1)]
        device = workspace.device
        group = num_qo_heads // num_kv_heads
        call = {"num_qo_heads": num_qo_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
                "dtype": dtype_name(q_dtype), "packed_rows": packed_rows_bucket(max(qo_lens, default=1), group),
                "kv_len": max(kv_lens, default=0), "device": device.type, "kv_dtype": dtype_name(kv_dtype)}
        choice = ATTENTION.select(call, backend)
        config = config or choice.config
        if (custom_mask is not None or packed_custom_mask is not None) and not device_info().arch.startswith("sm_"):
            # gfx942 compile check: the mask's byte gathers took the 4-warp tiles to one wave per SIMD
            # (16-row tile: 36 KiB LDS, one workgroup per CU; 64-row: 256-274 VGPRs on gfx950); 8 warps
            # give two or more, no spills (kernels.aot_specs lists these). Not timed on an AMD GPU.
            config = {**(config or {}), "num_warps": MASK_WARPS_AMD}
        work = make_plan(qo_lens, kv_lens, group, num_kv_heads, head_dim, device, config=config)
        as_i32 = lambda t: t.to(device=device, dtype=torch.int32)  # noqa: E731
        tables = [qo_indptr, kv_indptr] + ([kv_last_page_len] if paged else [])
        mask = _packed_mask(custom_mask, packed_custom_mask, qo_lens, kv_lens, device)
        mask_layout = None
        if mask is not None:
            from .masks import CLASS_KEYS, class_offsets

            if work.block_n % CLASS_KEYS:  # the kernel reads a block's classes as whole groups
                raise ValueError(f"a custom mask needs BLOCK_N to be a multiple of {CLASS_KEYS}; the config gave "
                                 f"{work.block_n}")

            # the mask's byte offsets, then its visibility classes' (masks.CLASS_KEYS), after its bytes
            mask_layout = (mask[1].tolist(), class_offsets(qo_lens, kv_lens, base=mask[0].numel()))
            tables += [mask[1], torch.tensor(mask_layout[1], dtype=torch.int32)]
            causal = False  # FlashInfer: causal applies only without a custom mask
        extra = {}
        rope = None
        if pos_encoding_mode == "ROPE_LLAMA":
            rope = RopePlan((float(rope_scale or 1.0), float(rope_theta or 1e4)), head_dim, num_qo_heads, num_kv_heads,
                            q_dtype, kv, rotate_keys_ahead(qo_lens, kv_lens, group, work.block_m, causal, config),
                            bool((config or {}).get("rope_q_ahead", True)))
            if not rope.ahead and not device_info().arch.startswith("sm_"):
                # gfx942 compile check of in-kernel RoPE's decode tile: at 4 warps the pipelined cos/sin
                # table reads took 56 KiB of LDS (one wave per SIMD); 8 warps: 156 VGPRs, 2 waves, no
                # spills (kernels.aot_specs). Not timed on an AMD GPU.
                work = dataclasses.replace(work, num_warps=MASK_WARPS_AMD)
        if choice.impl.prepare is not None:
            extra = choice.impl.prepare(paged=paged, qo_lens=qo_lens, kv_lens=kv_lens, kv_indptr=kv_indptr,
                                        kv_indices=kv_indices, page_size=page_size, device=device,
                                        custom_mask=(mask[0], *mask_layout) if mask is not None else None,
                                        rope=rope)
        partial_o = partial_lse = None
        if work.split:
            partial_o, partial_lse = _carve(workspace, work.num_partial_rows, num_qo_heads, head_dim)
        return cls(paged, page_size, num_qo_heads, num_kv_heads, head_dim, q_dtype, kv_dtype, causal,
                   1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale), window_left,
                   logits_soft_cap or None, as_i32(qo_indptr), as_i32(kv_indptr),
                   as_i32(kv_indices) if paged else None, as_i32(kv_last_page_len) if paged else None,
                   qo[-1], kv[-1] if not paged else 0, max_page, torch.cat([as_i32(t) for t in tables]), work,
                   partial_o, partial_lse, choice.impl.backend, extra, mask[0] if mask is not None else None,
                   tuple(qo_lens), tuple(kv_lens), tuple(mask[1].tolist()) if mask is not None else (),
                   alibi_slopes(num_qo_heads).to(device) if pos_encoding_mode == "ALIBI" else None,
                   rope.params if rope is not None else None)

    # -- run --------------------------------------------------------------------------------------

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_strides, *, out=None, lse=None,
            return_lse=False, sm_scale_mult: float = 1.0, v_scale: Optional[float] = None, sinks=None):
        out, lse = self.checked_outputs(q, k, out, lse)
        sinks = self.checked_sinks(sinks, q)
        if torch.compiler.is_compiling():
            if self.slot < 0:
                raise RuntimeError("this attention plan is not bound to a wrapper, so torch.compile cannot run it")
            _compiled_launch(_launch_bound_plan, self.slot, q, k, v, list(kv_strides), out, lse,
                             self.sm_scale * sm_scale_mult, sinks)
        else:
            ATTENTION.impls[self.backend].fn(self, q, k, v, kv_strides, out, lse, self.sm_scale * sm_scale_mult, sinks)
        if isinstance(v_scale, torch.Tensor) or (v_scale is not None and v_scale != 1.0):
            out.mul_(v_scale)  # a tensor is not compared: that would be a sync
        return (out, lse) if return_lse else out

    def checked_sinks(self, sinks, q: torch.Tensor):
        """Attention-sink logits: None, or ``[num_qo_heads]`` of a float dtype on q's device (fp16/bf16
        are taken as an fp32 copy, a fixed-size allocation)."""
        if sinks is None:
            return None
        check_tensor("sinks", sinks, ndim=1, dtypes=(torch.float32, torch.float16, torch.bfloat16))
        check_shape("sinks", sinks, (self.num_qo_heads,), "[num_qo_heads], one logit per query head")
        check_same_device([("q", q), ("sinks", sinks)])
        return sinks.float().contiguous()

    def checked_outputs(self, q, k, out, lse):
        """Check ``q`` and the cache against the plan (metadata only), and ``out``/``lse`` or allocate them."""
        check_tensor("q", q, ndim=3, dtypes=(self.q_dtype,))
        if k.dtype != self.kv_dtype:
            raise TypeError(f"the KV cache is {dtype_name(k.dtype)} but plan() was given kv_data_type="
                            f"{dtype_name(self.kv_dtype)}")
        check_shape("q", q, (self.total_q, self.num_qo_heads, self.head_dim),
                    "[qo_indptr[-1], num_qo_heads, head_dim] from plan()")
        if q.stride(-1) != 1:
            raise ValueError("q must be contiguous in its last dimension")
        check_same_device([("q", q), ("kv cache", k)])
        if out is not None:
            check_tensor("out", out, ndim=3, dtypes=(q.dtype,))
            check_shape("out", out, q.shape, "the shape of q")
        if lse is not None:
            check_tensor("lse", lse, ndim=2, dtypes=(torch.float32,))
            check_shape("lse", lse, q.shape[:2], "[total_q, num_qo_heads]")
        out, lse = outputs_for(q, out, lse)
        for name, t in (("out", out), ("lse", lse)):
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
        return out, lse


# --------------------------------------------------------------------------------------------------
# torch.compile: a run is one custom op that names its plan by an int (a plan is no operator argument)

_BOUND_PLANS: dict[int, AttentionPlan] = {}
_SLOTS = itertools.count()


def new_plan_slot(owner) -> int:
    """A slot for ``owner``'s plans (a wrapper; it re-plans into the same slot, so a compiled graph,
    which holds the slot number, runs the latest plan, as an eager run would). Freed with the owner."""
    slot = next(_SLOTS)
    weakref.finalize(owner, _free_slot, slot)
    return slot


def _free_slot(slot: int) -> None:
    _BOUND_PLANS.pop(slot, None)
    _BOUND_LEVELS.pop(slot, None)


def bind_plan(slot: int, plan: Optional[AttentionPlan]) -> Optional[AttentionPlan]:
    """``plan`` as the one in ``slot`` (None clears it)."""
    if plan is None:
        _BOUND_PLANS.pop(slot, None)
        return None
    plan = replace(plan, slot=slot) if plan.slot != slot else plan
    _BOUND_PLANS[slot] = plan
    return plan


def _launch_bound_plan(slot: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_strides: list[int],
                       out: torch.Tensor, lse: torch.Tensor, sm_scale: float, sinks: Optional[torch.Tensor]) -> None:
    plan = _BOUND_PLANS[slot]
    ATTENTION.impls[plan.backend].fn(plan, q, k, v, tuple(kv_strides), out, lse, sm_scale, sinks)


_compiled_launch = mutating_ops({_launch_bound_plan: ("attention_run", ("out", "lse"))})


def _carve(workspace: torch.Tensor, rows: int, heads: int, head_dim: int):
    """fp32 partial outputs and LSEs as views of the caller's float workspace (fixed memory, so a
    captured graph stays valid), or a clear error when it is too small."""
    need = rows * heads * (head_dim + 1) * 4
    if workspace.dtype != torch.uint8 or workspace.dim() != 1:
        raise TypeError("float_workspace_buffer must be a 1-D uint8 tensor")
    if workspace.numel() < need:
        raise ValueError(f"float_workspace_buffer holds {workspace.numel()} bytes; this plan's split-KV "
                         f"partial states need {need} (allocate at least that, e.g. 128 MiB)")
    floats = workspace[:need].view(torch.float32)
    o = floats[: rows * heads * head_dim].view(rows, heads, head_dim)
    s = floats[rows * heads * head_dim:].view(rows, heads)
    return o, s


# --------------------------------------------------------------------------------------------------
# Several plans over the same queries (cascade levels), merged into one output.


@dataclass(frozen=True)
class LevelMerge:
    """One merge for all levels: each level's work list writes its partial states into its own rows
    of one workspace (``works``), and one merge over ``indptr`` combines every level of a token."""

    works: list
    indptr: torch.Tensor
    partial_o: torch.Tensor
    partial_lse: torch.Tensor


def plan_level_merge(plans: list, workspace: torch.Tensor) -> Optional[LevelMerge]:
    """The one-merge layout for ``plans`` (same queries, host side), or None when a level's backend
    cannot write partial states into given rows (backends.PARTIAL_STATE_RUNNERS); ``run_levels`` then
    merges level by level."""
    from dataclasses import replace

    if any(p.backend not in PARTIAL_STATE_RUNNERS for p in plans):
        return None
    counts = [[b - a for a, b in zip(ind[:-1], ind[1:])] for ind in (p.work.merge_indptr.tolist() for p in plans)]
    starts, indptr = [[] for _ in plans], [0]
    for t in range(plans[0].total_q):
        row = indptr[-1]
        for level, per_token in enumerate(counts):
            starts[level].append(row)
            row += per_token[t]
        indptr.append(row)
    device, first = plans[0].qo_indptr.device, plans[0]
    works = [replace(p.work, split=True, merge_indptr=torch.tensor(st + [indptr[-1]], dtype=torch.int32,
                                                                    device=device))
             for p, st in zip(plans, starts)]
    partial_o, partial_lse = _carve(workspace, indptr[-1], first.num_qo_heads, first.head_dim)
    return LevelMerge(works, torch.tensor(indptr, dtype=torch.int32, device=device), partial_o, partial_lse)


def outputs_for(q: torch.Tensor, out: Optional[torch.Tensor], lse: Optional[torch.Tensor]):
    """A run's ``(out, lse)``: the caller's, else new ones (``checked_outputs``, after checking the caller's; a
    replayed call plan directly, whose key says that the caller's passed those checks when it was recorded)."""
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    return out, lse


def held_device_tensors(*held) -> tuple:
    """Every device tensor that ``held`` (plans, work lists, a level merge; nested in dataclasses, tuples,
    lists and dicts) keeps, once each, in a fixed order: a call plan's slots beside the call's own tensors
    (core/plans.py), since the launches a wrapper's run() makes point into what its plan() built."""
    found: dict[int, torch.Tensor] = {}

    def walk(obj) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu":
                found.setdefault(id(obj), obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)

    for obj in held:
        walk(obj)
    return tuple(found.values())


_BOUND_LEVELS: dict[int, tuple] = {}


def bind_levels(slot: int, plans: list, merge: Optional[LevelMerge]) -> None:
    """A multi-level run's plans and merge layout, found by ``slot`` (new_plan_slot) under torch.compile."""
    _BOUND_LEVELS[slot] = (plans, merge)


def _launch_bound_levels(slot: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_strides: list[int],
                         out: torch.Tensor, lse: torch.Tensor, sinks: Optional[torch.Tensor],
                         sm_scale_mult: float) -> None:
    plans, merge = _BOUND_LEVELS[slot]
    _launch_levels(plans, merge, q, k, v, tuple(kv_strides), out, lse, sinks, sm_scale_mult)


_compiled_levels = mutating_ops({_launch_bound_levels: ("attention_run_levels", ("out", "lse"))})


def _launch_levels(plans, merge, q, k, v, kv_strides, out, lse, sinks, sm_scale_mult: float = 1.0) -> None:
    from aiter_ext.ops.merge_state.api import _merge_many_out

    for level, (plan, work) in enumerate(zip(plans, merge.works)):
        PARTIAL_STATE_RUNNERS[plan.backend](plan, work, q, k, v, kv_strides, merge.partial_o, merge.partial_lse,
                                            sinks if level == 0 else None, sm_scale_mult)
    _merge_many_out(merge.partial_o, merge.partial_lse, merge.indptr, out, lse, None)


def run_levels(plans: list, merge: Optional[LevelMerge], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_strides, sinks=None, slot: int = -1, out: Optional[torch.Tensor] = None, sm_scale_mult: float = 1.0,
               lse: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over every level's KV, as one softmax: ``(out, lse)``. With ``merge`` (from
    ``plan_level_merge``), every level writes partial states and one merge launch combines them;
    without, each level runs whole and is merged into the result in turn. ``sinks`` enter the first
    level only: one sink term per row in the merged softmax. ``slot``: where bind_levels put these
    plans (needed under torch.compile, where the merged run is one custom op). ``out``: where the
    result goes (checked as the plans check it), else a new tensor. ``sm_scale_mult`` scales every
    level's softmax scale (an fp8 KV cache's k_scale). ``lse`` (with ``merge`` only): where the merged LSE
    goes, checked as ``out`` is (a call plan's recording passes both, allocated outside it)."""
    from aiter_ext.ops.merge_state.api import merge_state_in_place

    if merge is None:
        out, lse = plans[0].run(q, k, v, kv_strides, out=out, return_lse=True, sinks=sinks, sm_scale_mult=sm_scale_mult)
        for plan in plans[1:]:
            o_level, lse_level = plan.run(q, k, v, kv_strides, return_lse=True, sm_scale_mult=sm_scale_mult)
            merge_state_in_place(out, lse, o_level, lse_level)
        return out, lse
    out, lse = plans[0].checked_outputs(q, k, out, lse)
    sinks = plans[0].checked_sinks(sinks, q)
    if torch.compiler.is_compiling():
        if slot not in _BOUND_LEVELS:
            raise RuntimeError("these cascade levels are not bound (bind_levels), so torch.compile cannot run them")
        _compiled_levels(_launch_bound_levels, slot, q, k, v, list(kv_strides), out, lse, sinks, float(sm_scale_mult))
    else:
        _launch_levels(plans, merge, q, k, v, kv_strides, out, lse, sinks, sm_scale_mult)
    return out, lse
