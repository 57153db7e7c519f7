"""What a stage asks for (cpu, memory, whole GPUs), and the named sets of it stages pick by name:
the built-in and a pipeline's own ``resource_profiles`` (not pipeline profiles, which are
deployments: ``spec.profiles``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.errors import did_you_mean, one_of
from airflow_mlops._core.units import cpu_problem, memory_problem
from airflow_mlops.spec.base import Strict


class Resources(Strict):
    """What a stage asks for: CPUs (``4`` or ``500m``), memory (``16Gi``) and whole GPUs."""

    profile: str | None = Field(None, description="A resource profile to start from (built in, or the pipeline's "
                                "resource_profiles); the other fields override it.")
    cpu: str | None = Field(None, description="Kubernetes CPU quantity, e.g. '4' or '500m'.",
                            json_schema_extra={"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]})
    memory: str | None = Field(None, description="Kubernetes memory quantity, e.g. '16Gi'.")
    gpu: int | None = Field(None, ge=0, description="Whole number of GPUs (nvidia.com/gpu).")

    def held(self) -> dict[str, Any]:
        """``{cpu, memory, gpu}`` as set (its ``profile`` already applied): what a job bills and a pod requests."""
        return self.model_dump(exclude_none=True, exclude={"profile"})

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if cpu_problem(v):
            raise PydanticCustomError("cpu", "{problem}", {"problem": cpu_problem(v)})
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if memory_problem(v):  # a bare number would be bytes: refused with a did-you-mean
            raise PydanticCustomError("memory", "{problem}", {"problem": memory_problem(v)})
        return v

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise PydanticCustomError("gpu", "expected a whole number of GPUs, got {v}", {"v": repr(v)})
        return v


BUILTIN_PROFILES: dict[str, Resources] = {
    "training": Resources(cpu="16", memory="64Gi", gpu=4),
    "inference": Resources(cpu="4", memory="16Gi", gpu=1),
    "small": Resources(cpu="1", memory="2Gi", gpu=0),
}


def with_profile(resources: str | Resources | None, profiles: dict[str, Resources]) -> Resources | None:
    """``resources`` as held: a profile name is that profile; inline fields override the profile
    they name (``{profile: training, gpu: 8}``). The one place profiles are merged (a pipeline's
    stages, GpuTrainOperator). Raises ValueError for a profile ``profiles`` lacks."""
    if resources is None:
        return None
    name = resources if isinstance(resources, str) else resources.profile
    if name is None:
        return resources
    if name not in profiles:
        raise ValueError(f"unknown resource profile {name!r}{did_you_mean(name, profiles)}; known: {one_of(profiles)}")
    if isinstance(resources, str):
        return profiles[name]
    return profiles[name].model_copy(update=resources.held())
