"""What a training run measures and reports: NVML sampling (``nvml``), its Prometheus export
(``prometheus``) and cost accounting (``cost``). Nothing here imports pynvml or MLflow at module
level: DAG files import the operators that use it."""
