"""What a training run measures and reports: NVML loading and its errors (``nvml``), the GPUs
here and the choice among them (``devices``), the sampler thread (``sampler``) and its MLflow sink
(``mlflow_sink``), the Prometheus export (``prometheus``), GPU availability checks
(``availability``) and cost accounting (``cost``). Nothing here imports pynvml, MLflow or
prometheus_client at module level: DAG files import the operators that use it."""
