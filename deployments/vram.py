"""GPU memory as the autoscaler and Ray's scheduler need it, read from NVML.

Two uses:
- A replica reports the memory of the GPUs Ray assigned to it (`replica_vram_stats`), mapped through
  the assigned ids or UUIDs: NVML ignores CUDA_VISIBLE_DEVICES, so "device 0" would be the host's.
- A node advertises its GPUs' memory as the custom resource `vram_gb`, so deployments can ask for
  memory and Ray packs replicas by it. `python -m deployments.vram` prints the `ray start` flags.

Memory is counted in GiB (2**30 bytes) throughout, as GPUs are sold: a "12 GB" card has 12 GiB.
Without a GPU or an NVIDIA driver every figure is 0.
"""

import argparse
import json
import os
from functools import cache

GIB = 2**30
VRAM_RESOURCE = "vram_gb"


@cache
def nvml_available() -> bool:
    """Initialise NVML once per process (then a memory reading takes microseconds); False without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver or no library: a CPU-only machine
        return False
    return True


def _nvml_devices(gpu_ids: list[str]) -> list:
    """NVML handles for Ray/CUDA GPU ids: indices of the host's devices, or UUIDs."""
    import pynvml

    handles = []
    for gpu_id in gpu_ids:
        if gpu_id.startswith(("GPU-", "MIG-")):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(gpu_id))
        else:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(gpu_id)))
    return handles


def gpu_memory(gpu_ids: list[str]) -> tuple[float, float]:
    """(used, total) bytes over the given GPUs as NVML sees them; (0, 0) without NVML or GPUs."""
    if not gpu_ids or not nvml_available():
        return 0.0, 0.0
    import pynvml

    infos = [pynvml.nvmlDeviceGetMemoryInfo(handle) for handle in _nvml_devices(gpu_ids)]
    return float(sum(info.used for info in infos)), float(sum(info.total for info in infos))


def replica_vram_stats(gpu_ids: list[str]) -> dict[str, float]:
    """What a replica reports to the autoscaler (all in GiB): its GPUs' NVML memory, torch's allocator."""
    import torch

    used, total = gpu_memory(gpu_ids)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "vram_used_gb": used / GIB,
        "vram_total_gb": total / GIB,
        "torch_reserved_gb": torch.cuda.memory_reserved() / GIB if cuda else 0.0,
        "torch_peak_gb": torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
    }


def visible_gpu_ids() -> list[str]:
    """The GPUs a `ray start` in this environment would see: CUDA_VISIBLE_DEVICES, else all of them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu_id.strip() for gpu_id in visible.split(",") if gpu_id.strip()]
    if not nvml_available():
        return []
    import pynvml

    return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print the `ray start` flags that advertise this node's GPU memory as the `vram_gb` resource."
    )
    parser.add_argument(
        "--reserve-gb", type=float, default=1.0, help="Per GPU, left out for CUDA contexts and fragmentation."
    )
    args = parser.parse_args()
    gpu_ids = visible_gpu_ids()
    _, total = gpu_memory(gpu_ids)
    usable = max(0.0, total / GIB - args.reserve_gb * len(gpu_ids))
    # No spaces and no quotes: `ray start $(python -m deployments.vram)` splits the output at spaces and
    # passes quotes through literally.
    resources = json.dumps({VRAM_RESOURCE: int(usable)}, separators=(",", ":"))
    print(f"--num-gpus={len(gpu_ids)} --resources={resources}")


if __name__ == "__main__":
    main()
