"""A stand-in for AMD's ``amdsmi`` (test tree only): one MI300X (gfx942), so that vLLM's platform
resolves to ROCm on a CPU host and the contract tests follow the path an MI300X would (issue 15)."""


class AmdSmiException(Exception):
    pass


class AmdSmiMemoryType:
    VRAM = 0


_HANDLE = object()


def amdsmi_init(*args, **kwargs):
    return None


def amdsmi_shut_down(*args, **kwargs):
    return None


def amdsmi_get_processor_handles():
    return [_HANDLE]


def amdsmi_get_gpu_asic_info(handle):
    return {"target_graphics_version": "gfx942", "market_name": "AMD Instinct MI300X", "device_id": "0x74a1",
            "vendor_id": "0x1002"}


def amdsmi_get_gpu_device_uuid(handle):
    return "00000000-0000-0000-0000-000000000000"


def amdsmi_get_gpu_memory_total(handle, memory_type=AmdSmiMemoryType.VRAM):
    return 192 << 30


def amdsmi_topo_get_link_type(a, b):
    return {"type": 2}


def amdsmi_topo_get_numa_node_number(handle):
    return 0
