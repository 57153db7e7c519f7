"""A FAKE NVML: a stand-in for the ``pynvml`` module (nvidia-ml-py), because no NVIDIA GPU or
driver exists on CI machines or developers' machines, where the real ``pynvml.nvmlInit()``
raises ``NVMLError_LibraryNotFound``.

This is the only fake in the GPU tests, and it sits exactly at the NVML boundary: the code under
test calls the same functions with the same arguments and gets objects shaped like NVML's
(``.gpu``, ``.total``/``.free``/``.used``, milliwatts, millijoules, ``NVMLError`` subclasses with
a ``value``). Install it with ``install(monkeypatch, FakeNvml(...))``, which puts it in
``sys.modules["pynvml"]`` for the test only. Where a machine with a GPU is lent, the real path
runs there instead (see tests/telemetry/test_gpu.py).

Each reading is scripted: a list of values is consumed one per call (the last one repeats), so
tests know exactly what each sample sees.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12


class NVMLError(Exception):
    _messages = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized", NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported", NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._messages.get(self.value, f"Unknown Error {self.value}")


class NVMLError_Uninitialized(NVMLError):  # noqa: N801 - NVML's own names
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_UNINITIALIZED)


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_INVALID_ARGUMENT)


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_DRIVER_NOT_LOADED)


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


GiB = 2**30


@dataclass
class FakeGpu:
    """One scripted GPU. Lists are consumed one value per NVML call, the last value repeating;
    ``None`` for power/energy makes the query raise NVMLError_NotSupported (as on GPUs without
    those counters)."""

    name: str = "NVIDIA Fake H100"
    memory_total: int = 80 * GiB
    memory_used: list[int] = field(default_factory=lambda: [1 * GiB])
    utilization: list[int] = field(default_factory=lambda: [0])
    power_mw: list[int] | None = field(default_factory=lambda: [100_000])
    temperature: list[int] = field(default_factory=lambda: [40])
    energy_mj: list[int] | None = field(default_factory=lambda: [1_000_000])
    calls: dict[str, int] = field(default_factory=dict)

    def next(self, what: str) -> Any:
        values = getattr(self, what)
        if values is None:
            raise NVMLError_NotSupported()
        i = self.calls.get(what, 0)
        self.calls[what] = i + 1
        return values[min(i, len(values) - 1)]


class FakeNvml:
    """A ``pynvml``-compatible object: put it in ``sys.modules["pynvml"]``.

    :param gpus: the scripted GPUs (index = position).
    :param init_error: an NVMLError subclass that ``nvmlInit`` raises (e.g. no driver).
    """

    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    __name__ = "pynvml"
    __file__ = __file__  # where the fake lives, for anyone who asks

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: type[NVMLError] | None = None) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.initialised = 0  # nvmlInit minus nvmlShutdown calls: must end at 0
        self.init_calls = 0
        self._lock = threading.Lock()

    # -- library ------------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error()
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._check()
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._check()
        return "999.99-fake"

    def _check(self) -> None:
        if self.initialised <= 0:
            raise NVMLError_Uninitialized()

    def _gpu(self, handle: Any) -> FakeGpu:
        self._check()
        return self.gpus[handle.index]

    # -- devices ------------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        return f"GPU-fake-{handle.index:04d}"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802
        gpu = self._gpu(handle)
        with self._lock:
            used = gpu.next("memory_used")
        return SimpleNamespace(total=gpu.memory_total, used=used, free=gpu.memory_total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:  # noqa: N802
        gpu = self._gpu(handle)
        with self._lock:
            return SimpleNamespace(gpu=gpu.next("utilization"), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:  # noqa: N802 - milliwatts
        gpu = self._gpu(handle)
        with self._lock:
            return gpu.next("power_mw")

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:  # noqa: N802
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError_InvalidArgument()
        gpu = self._gpu(handle)
        with self._lock:
            return gpu.next("temperature")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802 - millijoules
        gpu = self._gpu(handle)
        with self._lock:
            return gpu.next("energy_mj")


def install(monkeypatch: Any, fake: FakeNvml) -> FakeNvml:
    """Make ``import pynvml`` return the fake for this test (monkeypatch undoes it)."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def two_gpus() -> FakeNvml:
    """An H100-like GPU and an A100-like one, with a few readings each (what the telemetry tests sample)."""
    return FakeNvml([
        FakeGpu(utilization=[10, 50, 90, 30], memory_used=[2 * GiB, 6 * GiB, 5 * GiB, 3 * GiB],
                power_mw=[100_000, 250_000, 300_000, 150_000], temperature=[40, 55, 61, 50],
                energy_mj=[1_000_000, 1_002_000, 1_005_500, 1_009_000, 1_012_000]),
        FakeGpu(name="NVIDIA Fake A100", memory_total=40 * GiB, utilization=[0, 100], memory_used=[1 * GiB, 39 * GiB],
                power_mw=[60_000, 400_000], temperature=[35, 80], energy_mj=[5_000, 7_000, 11_000]),
    ])
