"""What a task cost: GPU-hours, CPU-hours and memory GiB-hours × a price table.

A task's cost is what it held, not what it used: the resources it was given (GPUs, CPUs, memory)
× its wall-clock time, as a cloud bills a node. Memory "GB" is GiB (2^30 bytes), the unit of
Kubernetes' ``Gi``: ``64Gi`` is 64 GB here.

Each task records its cost in MLflow (metrics ``cost/gpu_hours``, ``cost/cpu_hours``,
``cost/memory_gib_hours``, ``cost/gpu``, ``cost/cpu``, ``cost/memory``, ``cost/total``, tags
``airflow_mlops.cost.*``) and in its XCom result. :func:`report` adds up the tasks of one Airflow
DAG run by stage, which ``airflow-mlops cost RUN_ID [--dag DAG_ID] [--tracking-uri URI]`` prints
(``airflow-mlops cost``, ``airflow_mlops.cli.tracking``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from airflow_mlops._core.units import memory_gib, parse_cpu
from airflow_mlops.spec.prices import PriceTable

COST_PREFIX = "cost"
PRICES_TAG = "airflow_mlops.cost.prices"


@dataclass
class TaskResources:
    """What a task held while it ran."""

    gpu: int = 0
    cpu: float = 1.0
    memory_gib: float = 1.0


@dataclass
class Cost:
    gpu_hours: float
    cpu_hours: float
    memory_gib_hours: float
    gpu: float
    cpu: float
    memory: float
    total: float
    wall_seconds: float | None = None

    def metrics(self) -> dict[str, float]:
        """``cost/<field>`` MLflow metrics."""
        return {f"{COST_PREFIX}/{k}": float(v) for k, v in asdict(self).items() if v is not None}

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def cost(gpu_hours: float, cpu_hours: float, memory_gib_hours: float, prices: PriceTable | dict | None = None) -> Cost:
    """Hours × prices."""
    p = as_prices(prices)
    for name, value in (("gpu_hours", gpu_hours), ("cpu_hours", cpu_hours), ("memory_gib_hours", memory_gib_hours)):
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value!r}")
    gpu, cpu, memory = gpu_hours * p.gpu_hour, cpu_hours * p.cpu_hour, memory_gib_hours * p.memory_gib_hour
    return Cost(gpu_hours=gpu_hours, cpu_hours=cpu_hours, memory_gib_hours=memory_gib_hours,
                gpu=gpu, cpu=cpu, memory=memory, total=gpu + cpu + memory)


def task_cost(resources: TaskResources, wall_seconds: float, prices: PriceTable | dict | None = None) -> Cost:
    """A task's cost: the resources it held × its wall-clock hours."""
    if wall_seconds < 0:
        raise ValueError(f"wall_seconds must be ≥ 0, got {wall_seconds!r}")
    hours = wall_seconds / 3600.0
    result = cost(resources.gpu * hours, resources.cpu * hours, resources.memory_gib * hours, prices)
    result.wall_seconds = wall_seconds
    return result


def as_prices(prices: PriceTable | dict | None) -> PriceTable:
    if prices is None:
        return PriceTable()
    if isinstance(prices, PriceTable):
        return prices
    return PriceTable.model_validate(prices)


def resources_from(spec: Any, gpus_held: int) -> TaskResources:
    """``{cpu, memory, gpu}`` (a dict or a ``Resources``) → TaskResources. ``gpu`` defaults to the
    GPUs the task was actually given; cpu to 1 and memory to 1 GB when not said."""
    if spec is None:
        return TaskResources(gpu=gpus_held)
    get = spec.get if isinstance(spec, dict) else (lambda k, d=None: getattr(spec, k, d))
    gpu = get("gpu")
    cpu = get("cpu")
    memory = get("memory")
    return TaskResources(
        gpu=gpus_held if gpu is None else int(gpu),
        cpu=1.0 if cpu is None else parse_cpu(cpu),
        memory_gib=1.0 if memory is None else memory_gib(memory),
    )


def mlflow_tags(c: Cost, prices: PriceTable, resources: TaskResources) -> dict[str, str]:
    return {
        PRICES_TAG: prices.model_dump_json(),
        "airflow_mlops.cost.resources": json.dumps(asdict(resources)),
        "airflow_mlops.cost.total": f"{c.total:.6f}",
    }


# -- the report: one DAG run's cost by stage -------------------------------------------------


@dataclass
class StageCost:
    stage: str
    tasks: list[str]
    runs: int  # MLflow runs (a retried task has one per try; each try held its resources)
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    gpu: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    total: float = 0.0


def stage_of(task_id: str) -> str:
    """YAML stages run as ``<stage>.run`` in a task group; a hand-written task is its own stage."""
    return task_id.split(".", 1)[0] if "." in task_id else task_id


def report(run_id: str, *, tracking_uri: str | None = None, dag_id: str | None = None) -> list[StageCost]:
    """Cost by stage of one Airflow DAG run: every MLflow run tagged ``airflow.run_id`` = run_id
    (in any experiment) that recorded ``cost/total``. Every try of a task counts."""
    from airflow_mlops._core.mlflow import read_only_client
    from airflow_mlops._core.tracking_uri import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = read_only_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    filters = [f"tags.`airflow.run_id` = '{_quote(run_id)}'"]
    if dag_id:
        filters.append(f"tags.`airflow.dag_id` = '{_quote(dag_id)}'")
    runs = []
    token = None
    while experiments:
        page = client.search_runs(experiments, filter_string=" and ".join(filters), max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    stages: dict[str, StageCost] = {}
    for run in runs:
        m = run.data.metrics
        if f"{COST_PREFIX}/total" not in m:
            continue
        task = run.data.tags.get("airflow.task_id", run.info.run_name or run.info.run_id)
        row = stages.setdefault(stage_of(task), StageCost(stage=stage_of(task), tasks=[], runs=0))
        if task not in row.tasks:
            row.tasks.append(task)
        row.runs += 1
        for name in ("gpu_hours", "cpu_hours", "memory_gib_hours", "gpu", "cpu", "memory", "total"):
            old = f"{COST_PREFIX}/memory_gb_hours" if name == "memory_gib_hours" else ""  # runs before 0.2
            setattr(row, name, getattr(row, name) + m.get(f"{COST_PREFIX}/{name}", m.get(old, 0.0)))
    return sorted(stages.values(), key=lambda r: r.stage)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
