"""What a run costs the machine, read at each log line: this process's CPU and memory (psutil), GPU memory
(PyTorch's allocator) and, where NVML is there (``pip install 'ddpmkit[nvml]'``, nvidia-ml-py), GPU utilisation.

| key                  | what                                                                        |
|----------------------|-----------------------------------------------------------------------------|
| ``cpu_percent``      | this process's CPU use since the previous reading, 100 = one core busy      |
| ``ram_gib``          | its resident memory                                                         |
| ``gpu_allocated_gib``| tensors held on the GPU now (torch.cuda.memory_allocated)                   |
| ``gpu_reserved_gib`` | what PyTorch's caching allocator holds from the driver                      |
| ``gpu_peak_gib``     | the most tensors held at once so far in this run (its last value: the run's)|
| ``gpu_interval_...`` | ``gpu_interval_peak_gib``: the same since the previous reading              |
|                      | (max_memory_allocated, then reset: torch's peak counters cover one interval)|
| ``gpu_util_percent`` | the GPU's busy share over NVML's last sample period (all processes on it)   |
| ``gpu_memory_used_gib`` | the whole GPU's used memory as the driver sees it (NVML)                 |
"""
from __future__ import annotations

import psutil
import torch

GIB = 2**30


class ResourceMonitor:
    def __init__(self, device: torch.device):
        self.device = device
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts the interval; it returns a meaningless 0
        self.nvml = _nvml_handle(device)
        self.peak_gib = 0.0  # the run's, over every interval so far

    def read(self) -> dict[str, float]:
        out = {"cpu_percent": self.process.cpu_percent(None), "ram_gib": self.process.memory_info().rss / GIB}
        if self.device.type == "cuda":
            interval_peak = torch.cuda.max_memory_allocated(self.device) / GIB
            torch.cuda.reset_peak_memory_stats(self.device)  # the next reading's peak is of its own interval
            self.peak_gib = max(self.peak_gib, interval_peak)
            out.update(gpu_allocated_gib=torch.cuda.memory_allocated(self.device) / GIB,
                       gpu_reserved_gib=torch.cuda.memory_reserved(self.device) / GIB,
                       gpu_interval_peak_gib=interval_peak, gpu_peak_gib=self.peak_gib)
        if self.nvml is not None:
            import pynvml

            try:
                out["gpu_util_percent"] = float(pynvml.nvmlDeviceGetUtilizationRates(self.nvml).gpu)
                out["gpu_memory_used_gib"] = pynvml.nvmlDeviceGetMemoryInfo(self.nvml).used / GIB
            except pynvml.NVMLError:  # not supported on this GPU (MIG, some vGPUs): leave it out, keep training
                self.nvml = None
        return out


def _nvml_handle(device: torch.device):
    """NVML's handle of ``device``'s GPU, or None without a GPU, without nvidia-ml-py, when NVML fails to start (a
    driver without it, a container without access) or when the GPU cannot be identified: utilisation is then left
    out, never read from another GPU.

    NVML numbers every GPU in PCI order, CUDA only the visible ones (CUDA_VISIBLE_DEVICES) and fastest first, so
    the GPU is found by what both report alike: its UUID (``MIG-`` for a MIG instance), else its PCI address."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        uuid = str(props.uuid).removeprefix("GPU-").removeprefix("MIG-")
        for name in (f"GPU-{uuid}", f"MIG-{uuid}"):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(name)
            except pynvml.NVMLError:
                pass
        address = f"{props.pci_domain_id:x}:{props.pci_bus_id:x}:{props.pci_device_id:x}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(address)
    except Exception:  # noqa: BLE001 - ImportError or any NVMLError: no utilisation readings, nothing else changes
        return None
