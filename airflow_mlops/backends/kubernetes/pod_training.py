"""GpuTrainOperator's training in a GPU pod: the job (``stages.train.job.GpuTrainJob``) travels as
the pod's payload, ``python -m airflow_mlops.stages.train.runner job`` runs it there through the
same ``TrainingRun`` as in the worker, and the result comes back by the one result protocol."""

from __future__ import annotations

from typing import Any

from airflow_mlops.spec.models import KubernetesSettings, MlflowSettings, Resources


class PodTraining:
    """One try of a training job in a pod; ``run()`` returns the job's result, ``kill()`` stops it.

    :param held_resources: what the operator asked for (cpu, memory, gpu); the GPU count falls
        back to the job's when unset.
    :param pipeline_id: names and labels the pod (and the MLflow credentials Secret).
    :param mlflow: where the tracking URI comes from: a connection's credentials reach the pod as a
        Secret reference (``credentials.py``).
    """

    def __init__(self, job: Any, *, task_id: str, kubernetes: KubernetesSettings, held_resources: Resources | None,
                 pipeline_id: str, mlflow: MlflowSettings, context: Any, log: Any, **_: Any) -> None:
        self.job, self.task_id, self.kubernetes = job, task_id, kubernetes
        self.held_resources, self.pipeline_id, self.mlflow = held_resources, pipeline_id, mlflow
        self.context, self.log = context, log
        self.pod_op: Any = None

    def pod_operator(self, secret_env: dict[str, Any] | None = None) -> Any:
        """The KubernetesPodOperator that runs the job, from the backend's one pod builder
        (requests = limits, GPU node selector/tolerations); ``secret_env``: ENV_NAME → {secret,
        key} references. In the pod the device plugin decides which GPUs the container sees, so
        the job takes them all."""
        from airflow_mlops.backends.kubernetes.pod import stage_pod_operator
        from airflow_mlops.stages.train.runner import encode_job

        job = self.job
        pod_resources = pod_resources_of(job, self.held_resources)
        job = job.model_copy(update={"gpu_ids": None, "gpus": pod_resources.gpu or 0,
                                     "resources": pod_resources.held()})
        return stage_pod_operator(
            task_id=self.task_id, kubernetes=self.kubernetes, resources=pod_resources,
            pipeline_id=self.pipeline_id, stage_name=self.task_id,
            arguments=["-m", "airflow_mlops.stages.train.runner", "job", "--payload", encode_job(job)],
            secret_env=secret_env)

    def run(self) -> dict[str, Any]:
        from airflow_mlops.backends.kubernetes.credentials import mlflow_secret_env
        from airflow_mlops.backends.kubernetes.pod import run_pod_operator

        self.pod_op = self.pod_operator(mlflow_secret_env(self.kubernetes, self.pipeline_id, self.mlflow,
                                                          self.job.credentials))
        self.log.info("Running the training in pod %s/%s (image %s)", self.kubernetes.namespace, self.pod_op.name,
                      self.kubernetes.image)
        return run_pod_operator(self.pod_op, self.context, stage_name=self.task_id, kubernetes=self.kubernetes,
                                training=(self.job.target(), self.job.tags))

    def kill(self) -> None:
        if self.pod_op is not None:
            self.pod_op.on_kill()


def pod_resources_of(job: Any, held: Resources | None) -> Resources:
    """What a training pod holds: the operator's ``resources`` (cpu, memory, gpu); the GPU count
    falls back to the job's (``gpus``, or how many ``gpu_ids``)."""
    gpus = len(job.gpu_ids) if job.gpu_ids is not None else job.gpus
    return Resources(cpu=held.cpu if held else None, memory=held.memory if held else None,
                     gpu=(held.gpu if held and held.gpu is not None else gpus) or None)
