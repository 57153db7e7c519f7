"""The NVML boundary: loading ``pynvml`` (from the ``nvidia-ml-py`` distribution) and what goes
wrong with GPUs. ``devices`` lists and chooses GPUs, ``sampler`` samples them while training runs;
both load NVML through :func:`load_nvml`.

``pynvml`` is imported when a probe or a sampler starts, never at module level. Without an NVIDIA
driver (``nvmlInit`` raises an ``NVMLError``, e.g. ``NVMLError_LibraryNotFound``) that is
:class:`NvmlUnavailable`; the sampler then logs one clear line (:data:`NO_GPU_MESSAGE`) and does
nothing: training goes on without GPU metrics.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NO_GPU_MESSAGE = "no NVIDIA driver/GPU found: training continues without GPU metrics"


class NvmlUnavailable(RuntimeError):
    """NVML could not be used here (no driver, no GPU, the module is missing)."""


class NotEnoughGpus(RuntimeError):
    """Fewer GPUs exist here than the task asked for."""


def load_nvml() -> Any:
    """The ``pynvml`` module (from nvidia-ml-py), initialised. Raises NvmlUnavailable, with
    NVML's own reason, when there is no driver/GPU; the caller must ``nvmlShutdown()``."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; be clear if it was left out
        raise NvmlUnavailable(f"the pynvml module (nvidia-ml-py) is not installed: {exc}") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML: {exc} ({type(exc).__name__})") from exc
    return pynvml


def shutdown_nvml(nvml: Any) -> None:
    """``nvmlShutdown()``, best effort: a failure is logged at debug level."""
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - shutting down is best effort
        log.debug("nvmlShutdown failed", exc_info=True)


def as_text(value: Any) -> str:
    """NVML names and UUIDs: ``bytes`` in older nvidia-ml-py releases, ``str`` in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
