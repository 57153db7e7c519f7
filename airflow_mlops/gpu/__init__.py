"""GPU training support, plain Python and backend-agnostic: NVML telemetry (``nvml``), the
Prometheus exposition of it (``prometheus``), cost accounting (``cost``) and the training job that
``GpuTrainOperator`` runs in the worker or in a pod (``job``, ``runner``).

Nothing here imports pynvml, MLflow or scikit-learn at module level: DAG files import the
operator, and parsing must stay cheap.
"""
