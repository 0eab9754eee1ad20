"""The resource readings of the training log."""
from __future__ import annotations

import sys
import types

import torch

from ddpmkit.resources import ResourceMonitor


def test_process_readings_are_real():
    monitor = ResourceMonitor(torch.device("cpu"))
    sum(range(2_000_000))  # some CPU work between the readings
    reading = monitor.read()
    assert set(reading) == {"cpu_percent", "ram_gib"} and 0.01 < reading["ram_gib"] < 64 and reading["cpu_percent"] > 0


def test_an_nvml_query_the_gpu_does_not_support_drops_utilisation_not_training(monkeypatch):
    # Regression: NVML's NotSupported (MIG, some vGPUs) on the utilisation query stopped training at its first log
    # line. A stand-in pynvml raises it; there is no GPU here to ask a real one.
    class NVMLError(Exception):
        pass

    def unsupported(handle):
        raise NVMLError("Not Supported")
    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetUtilizationRates=unsupported,
                                 nvmlDeviceGetMemoryInfo=unsupported)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = ResourceMonitor(torch.device("cpu"))
    monitor.nvml = object()  # as if a GPU's handle had been found
    assert "gpu_util_percent" not in monitor.read() and monitor.nvml is None
    assert set(monitor.read()) == {"cpu_percent", "ram_gib"}


class FakeNVML(types.SimpleNamespace):
    """A stand-in pynvml (no GPU here) that knows the GPUs given, by UUID and by PCI address."""

    class NVMLError(Exception):
        pass

    def __init__(self, uuids: dict[str, str], addresses: dict[str, str]):
        def by(table):
            def lookup(key):
                if key not in table:
                    raise self.NVMLError("Not Found")
                return table[key]
            return lookup
        super().__init__(nvmlInit=lambda: None, nvmlDeviceGetHandleByUUID=by(uuids),
                         nvmlDeviceGetHandleByPciBusId=by(addresses),
                         nvmlDeviceGetHandleByIndex=lambda i: f"nvml-index-{i}")


def fake_cuda_device(monkeypatch, uuid: str, bus: int):
    props = types.SimpleNamespace(uuid=uuid, pci_domain_id=0, pci_bus_id=bus, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)


def test_the_gpu_is_found_by_pci_address_when_its_uuid_is_unknown(monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3, CUDA's device 0 is NVML's GPU 3. The fallback took NVML's index 0 (another GPU,
    another job's utilisation); it now takes the GPU at the same PCI address, or none."""
    from ddpmkit.resources import _nvml_handle

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(uuids={}, addresses={"0:5e:0.0": "gpu-3"}))
    fake_cuda_device(monkeypatch, "0b5c...-unknown-to-this-driver", bus=0x5E)
    assert _nvml_handle(torch.device("cuda:0")) == "gpu-3"
    fake_cuda_device(monkeypatch, "0b5c...-unknown-to-this-driver", bus=0x11)  # no such address: no readings
    assert _nvml_handle(torch.device("cuda:0")) is None


def test_a_mig_instance_is_found_by_its_mig_uuid(monkeypatch):
    """CUDA reports a MIG instance's UUID without a prefix; NVML knows it as MIG-<uuid> (it was looked up as
    GPU-<uuid>, then by index)."""
    from ddpmkit.resources import _nvml_handle

    uuid = "4f2e8a1c-0d3b-5e6f-9a8b-7c6d5e4f3a2b"
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(uuids={f"MIG-{uuid}": "mig-1g"}, addresses={}))
    fake_cuda_device(monkeypatch, uuid, bus=0x5E)
    assert _nvml_handle(torch.device("cuda:0")) == "mig-1g"
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(uuids={f"GPU-{uuid}": "whole-gpu"}, addresses={}))
    assert _nvml_handle(torch.device("cuda:0")) == "whole-gpu"


def test_peak_gpu_memory_of_each_interval_and_of_the_run(monkeypatch):
    """A stand-in allocator (no GPU here): 5 GiB held briefly before the first reading, 1 GiB after. The second
    interval's peak is 1 GiB (it said 5 for the rest of the run: the peak was never reset); the run's stays 5."""
    allocator = {"now": 1.0, "peak": 5.0}

    def reset(device):
        allocator["peak"] = allocator["now"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: allocator["now"] * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: allocator["peak"] * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monitor = ResourceMonitor(torch.device("cuda:0"))
    first, second = monitor.read(), monitor.read()
    assert (first["gpu_interval_peak_gib"], first["gpu_peak_gib"]) == (5.0, 5.0)
    assert (second["gpu_interval_peak_gib"], second["gpu_peak_gib"]) == (1.0, 5.0)
