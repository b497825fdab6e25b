"""One probe for the device we run on: its arch name, compute-unit count and platform.

Arch names are ``gfx942``/``gfx950``/other ``gfxNNN`` on ROCm, ``sm_XY`` on CUDA and ``cpu`` when no
GPU is visible. The probe reads torch's device properties once (no rocminfo subprocess, nothing on the
hot path) and can be overridden for tests and GPU-less compile checks with ``AITER_EXT_ARCH`` and
``AITER_EXT_CU_NUM``.

``ARCH_TABLE`` holds what a GPU-less compile check needs to know of the AMD targets we ship for.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import find_data_root
from .env import env

#: Where the data folders (csrc/, configs/, hsa/, op_tests/, gap_matrix.yaml) live: AITER_EXT_ROOT, the
#: copy shipped in the package, or the checkout (core/data.py says in which order, and why).
REPO_ROOT = find_data_root()


@dataclass(frozen=True)
class AmdTarget:
    """Static facts of an AMD target, for compile checks made without the GPU."""

    arch: str
    lds_bytes: int  # LDS per CU that one workgroup may use
    cu_num: int  # CUs of the common full part (MI300X: 304, MI355X: 256)
    vgprs_per_simd: int = 512  # VGPRs a SIMD can hand out per lane; occupancy = 512 // vgprs
    max_waves_per_simd: int = 8
    wave_size: int = 64


ARCH_TABLE: dict[str, AmdTarget] = {
    "gfx942": AmdTarget("gfx942", lds_bytes=64 * 1024, cu_num=304),
    "gfx950": AmdTarget("gfx950", lds_bytes=160 * 1024, cu_num=256),
}


@dataclass(frozen=True)
class DeviceInfo:
    """What selection and dispatch key on: ``platform`` is ``rocm``, ``cuda`` or ``cpu``."""

    arch: str
    cu_num: int
    platform: str
    name: str

    @property
    def is_gpu(self) -> bool:
        return self.platform in ("rocm", "cuda")


def _probe() -> DeviceInfo:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if getattr(torch.version, "hip", None):
            # gcnArchName looks like "gfx942:sramecc+:xnack-"; the features do not change dispatch.
            arch = props.gcnArchName.split(":")[0]
            platform = "rocm"
        else:
            arch = f"sm_{props.major}{props.minor}"
            platform = "cuda"
        return DeviceInfo(arch, props.multi_processor_count, platform, props.name)
    return DeviceInfo("cpu", os.cpu_count() or 1, "cpu", "cpu")


@functools.lru_cache(maxsize=None)
def _probe_cached() -> DeviceInfo:
    return _probe()


def device_info() -> DeviceInfo:
    """The current device, with ``AITER_EXT_ARCH``/``AITER_EXT_CU_NUM`` overrides applied."""
    info = _probe_cached()
    arch = env("AITER_EXT_ARCH")
    cu = env("AITER_EXT_CU_NUM")
    if arch or cu:
        info = DeviceInfo(arch or info.arch, int(cu) if cu else info.cu_num, info.platform, info.name)
    return info


def get_arch() -> str:
    return device_info().arch


def get_cu_num() -> int:
    return device_info().cu_num
