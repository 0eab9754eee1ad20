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
