"""Stages in Kubernetes pods: the pod runs ``python -m airflow_mlops.runtime`` with the stage spec
and its context, i.e. the very same stage code the batch backend runs in the worker.

The cncf-kubernetes provider's KubernetesPodOperator does the pod work (creation, log streaming,
clean-up). It is built inside ``execute()``, so parsing a DAG never imports the kubernetes
client: the DAG processor re-parses every 30 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property, lru_cache
from typing import Any

from airflow_mlops._core.extras import require
from airflow_mlops._core.outcome import failed, for_airflow, skipped
from airflow_mlops._core.result import RESULT_MARKER
from airflow_mlops.backends.kubernetes._podspec import build_pod, pod_name
from airflow_mlops.backends.kubernetes.credentials import kafka_secret_env, mlflow_secret_env
from airflow_mlops.backends.stage import StageOperator
from airflow_mlops.spec.backend_settings import image_problem
from airflow_mlops.spec.models import KubernetesSettings, Resources, SecretEnv
from airflow_mlops.stages.registry import produces

LOG_TAIL_LINES = 30
KWARG_IMAGE = "give kubernetes={'image': ...}"  # where an operator's caller sets the image


def stage_pod_operator(
    *,
    task_id: str,
    kubernetes: KubernetesSettings,
    resources: Resources | None,
    pipeline_id: str,
    stage_name: str,
    arguments: list[str],
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, SecretEnv] | None = None,
) -> Any:
    """The KubernetesPodOperator that runs ``python <arguments>`` in a pod made by ``build_pod``
    (also what the unit tests inspect through ``build_pod_request_obj(dry_run=True)``). After
    ``execute`` it holds what the pod printed: ``stage_result``, ``stage_failure``,
    ``stage_skipped``, and ``unschedulable`` / ``log_tail`` for the error message."""
    k = kubernetes
    pod = build_pod(k, resources, pipeline_id=pipeline_id, stage_name=stage_name, command=["python"],
                    args=arguments, env=env, secret_env=secret_env)
    container, spec = pod.spec.containers[0], pod.spec
    return _pod_operator_class()(
        task_id=task_id,
        name=pod_name(pipeline_id, stage_name),
        namespace=pod.metadata.namespace,
        labels=pod.metadata.labels,
        image=container.image,
        image_pull_policy=container.image_pull_policy,
        cmds=container.command,
        arguments=container.args,
        env_vars=container.env,
        container_resources=container.resources,
        volume_mounts=container.volume_mounts,
        node_selector=spec.node_selector,
        tolerations=spec.tolerations,
        volumes=spec.volumes,
        image_pull_secrets=spec.image_pull_secrets,
        service_account_name=spec.service_account_name,
        kubernetes_conn_id=k.conn_id or "kubernetes_default",
        config_file=k.config_file,
        in_cluster=False if k.config_file else None,
        get_logs=True,
        log_events_on_failure=True,
        log_pod_spec_on_failure=False,  # a pod dump in the error buries the message (and lists env)
        on_finish_action="delete_pod",
        do_xcom_push=False,
        startup_timeout_seconds=int(k.startup_timeout.total_seconds()),
        schedule_timeout_seconds=int(k.schedule_timeout.total_seconds()),
        api_timeout=k.api_timeout.total_seconds(),
    )


def run_pod_operator(pod_op: Any, context: Any, *, stage_name: str, kubernetes: KubernetesSettings,
                     training: tuple[Any, dict[str, str]] | None = None) -> dict[str, Any]:
    """Run ``pod_op`` (from ``stage_pod_operator``) and return the result the pod printed by the
    result protocol (``_core/result.py``). ``training``: the ``(MlflowTarget, run tags)`` of the
    training the pod runs, where a pod that Kubernetes ended is recorded (the Models page's failed
    trainings; ``termination.termination_error``).

    Raises AirflowFailException (the stage's own verdict: no retry), AirflowSkipException (the
    stage skipped the rest of the run), ``DependencyFailed`` when the Kubernetes API server was
    unreachable for ``kubernetes.api_timeout`` (retryable; AirflowFailException when it refused
    the credentials, the namespace or a verb), AirflowFailException for a container killed for
    memory (OOMKilled: the limit is named), or RuntimeError naming why the pod failed: evicted,
    preempted or lost with its node (retried), the scheduler's reason for a pod never scheduled,
    else its error and last log lines."""
    try:
        pod_op.execute(context)
    except Exception as exc:
        raise explain_failure(pod_op, exc, stage_name=stage_name, kubernetes=kubernetes, training=training) from exc
    if pod_op.stage_result is None:
        raise RuntimeError(f"the pod finished but printed no '{RESULT_MARKER.strip()}' line; see its log above")
    return pod_op.stage_result


def explain_failure(pod_op: Any, exc: Exception, *, stage_name: str, kubernetes: KubernetesSettings,
                    training: tuple[Any, dict[str, str]] | None = None) -> Exception:
    """A failure message people can act on: the stage's own verdict, the scheduler's reason
    for a pod that never started, or the pod's exit code and last log lines. A training pod
    (``training``, see ``run_pod_operator``) that Kubernetes ended is recorded in MLflow."""
    if pod_op.stage_failure:
        return failed(f"stage '{stage_name}' failed in pod {pod_op.name}: {pod_op.stage_failure}")
    if pod_op.stage_skipped:
        return skipped(pod_op.stage_skipped)
    if pod_op.termination is not None:  # Kubernetes ended it: OOMKilled (no retry), evicted... (retried)
        from airflow_mlops.backends.kubernetes.termination import termination_error

        limits = pod_op.container_resources.limits if pod_op.container_resources else None
        return termination_error(pod_op.termination, stage_name=stage_name,
                                 pod=f"{kubernetes.namespace}/{pod_op.pod_name_seen or pod_op.name}",
                                 memory=(limits or {}).get("memory"), log_tail=pod_op.log_tail,
                                 training=training, log=pod_op.log)
    if pod_op.unschedulable:
        resources = pod_op.container_resources.requests if pod_op.container_resources else "none"
        return RuntimeError(
            f"pod {pod_op.name} was never scheduled within {int(kubernetes.schedule_timeout.total_seconds())}s: "
            f"{pod_op.unschedulable} (resources asked: {resources}; check the node pool's capacity, "
            f"labels {kubernetes.gpu_node_selector} and taints)"
        )
    api_failed = pod_api_failure(pod_op, exc, stage_name=stage_name, kubernetes=kubernetes)
    if api_failed is not None:
        return for_airflow(api_failed, pod_op.log)
    if pod_op.log_tail:
        tail = "\n".join(pod_op.log_tail)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RuntimeError(f"stage '{stage_name}' failed in pod {pod_op.name} ({first}); last log lines:\n{tail}")
    return exc


def pod_api_failure(pod_op: Any, exc: Exception, *, stage_name: str, kubernetes: KubernetesSettings) -> Any:
    """The ``DependencyFailed`` when ``exc`` is the API server's failure (else None), saying
    which pod was left: the pod made by this try keeps its labels (dag_id, task_id, run_id), so a
    retry of the task takes it over while it runs, or deletes it and starts a new one."""
    from airflow_mlops.backends.kubernetes.api import api_address, api_failure

    try:
        address = api_address(pod_op.hook.api_client)
    except Exception:  # no client could even be made: the message says so without the address
        address = None
    pod = getattr(pod_op, "pod", None)
    where = f"{kubernetes.namespace}/{pod.metadata.name}" if pod is not None else None
    kept = (f"pod {where} was left as it was (it could not be deleted); a retry of this task takes it over "
            "while it runs (same dag_id/task_id/run_id labels), or deletes it and starts a new one"
            if where else "no pod was created")
    return api_failure(exc, address=address, api_timeout=kubernetes.api_timeout.total_seconds(),
                       during=f"stage '{stage_name}'" + (f" (pod {where})" if where else f" (pod {pod_op.name}-*)"),
                       kept=kept)


class KubernetesBackedOperator(StageOperator):
    """A stage whose work happens on a Kubernetes cluster.

    :param kubernetes: pod settings (image, namespace, connection, volumes, secrets, ...).

    The pod requests ``stage_resources`` (cpu / memory / whole GPUs) as both requests and limits.
    """

    backend_label = "kubernetes"

    def __init__(self, *, kubernetes: KubernetesSettings | dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        require("cncf-kubernetes", f"{type(self).__name__}(task_id={self.task_id!r})")
        self.kubernetes = KubernetesSettings.model_validate(kubernetes)
        lacking = image_problem(self.kubernetes, KWARG_IMAGE)
        if lacking:
            raise ValueError(f"{type(self).__name__}(task_id={self.task_id!r}): {lacking}")


class KubernetesStageOperator(KubernetesBackedOperator):
    """Run a built-in stage in a pod that requests the stage's resource profile."""

    ui_color = "#e5f5e0"
    _pod_op: Any = None  # the KubernetesPodOperator of the running try, for on_kill

    def pod_name(self, pipeline_id: str | None = None) -> str:
        """``<pipeline>-<stage>`` as a DNS name (KubernetesPodOperator appends a random suffix)."""
        return pod_name(pipeline_id or self.pipeline_id or "stage", self.stage_name)

    def code_env(self) -> dict[str, str]:
        """Plain env for the pod: ``PYTHONPATH`` = the code the DAG sees (a PYTHONPATH in
        kubernetes.env wins), and the worker's MLflow request bound, so the pod bounds its MLflow
        requests as the worker does (its stage code exports the rest)."""
        import os

        from airflow_mlops._core.mlflow_faults import TIMEOUT_ENV

        env = {TIMEOUT_ENV: os.environ[TIMEOUT_ENV]} if os.environ.get(TIMEOUT_ENV) else {}
        if self.has_dag():
            from airflow_mlops._core.paths import code_paths, dags_folder

            paths = code_paths(self.dag.fileloc, dags_folder())
            if paths:
                env["PYTHONPATH"] = ":".join(paths)
        return env

    def pod_operator(self, arguments: list[str], pipeline_id: str | None = None,
                     secret_env: Mapping[str, SecretEnv] | None = None) -> Any:
        """The KubernetesPodOperator that runs this stage (see ``stage_pod_operator``)."""
        env = self.code_env()
        return stage_pod_operator(
            task_id=self.task_id, kubernetes=self.kubernetes, resources=self.stage_resources,
            pipeline_id=pipeline_id or self.pipeline_id or "", stage_name=self.stage_name, arguments=arguments,
            env=env, secret_env=secret_env)

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow_mlops.backends import runtime

        secret_env = mlflow_secret_env(self.kubernetes, ctx.pipeline_id, self.mlflow, ctx.mlflow.credentials)
        if ctx.kafka is not None:  # serve mode stream: its Kafka connection, by Secret reference
            secret_env = {**secret_env, **kafka_secret_env(self.kubernetes, ctx.pipeline_id,
                                                           self.stage.kafka_conn_id, ctx.kafka)}
        if getattr(self.stage, "distributed", None) is not None:  # a train stage's torchrun group
            return self.run_group(ctx, secret_env)
        arguments = ["-m", "airflow_mlops.runtime", "--payload", runtime.encode_payload(self.stage, ctx)]
        pod_op = self._pod_op = self.pod_operator(arguments, ctx.pipeline_id, secret_env)
        self.log.info("Running stage '%s' in pod %s/%s (image %s, resources %s%s)", ctx.stage_name,
                      self.kubernetes.namespace, pod_op.name, self.kubernetes.image, self.stage_resources,
                      f"; connection credentials from Secret(s) {', '.join(sorted({r.secret for r in secret_env.values()}))}"
                      if secret_env else "")
        return run_pod_operator(pod_op, context, stage_name=self.stage_name, kubernetes=self.kubernetes,
                                training=(ctx.mlflow, ctx.tags) if produces(self.stage.kind) == "model" else None)

    def run_group(self, ctx: Any, secret_env: Mapping[str, SecretEnv]) -> dict[str, Any]:
        """The train stage's job as a torchrun group of pods (``distributed.DistributedTraining``)."""
        from airflow_mlops.backends.kubernetes.distributed import DistributedTraining
        from airflow_mlops.stages.train.job import job_for_stage

        group = self._pod_op = DistributedTraining(
            job_for_stage(self.stage, ctx), distributed=self.stage.distributed, kubernetes=self.kubernetes,
            resources=self.stage_resources, pipeline_id=ctx.pipeline_id, stage_name=self.stage_name, log=self.log,
            env=self.code_env(), secret_env=secret_env)
        return self.outcome(group.run)

    def on_kill(self) -> None:
        if self._pod_op is not None:
            stop = getattr(self._pod_op, "on_kill", None) or self._pod_op.kill  # a pod operator, or a group
            stop()


@lru_cache(maxsize=1)
def _pod_operator_class() -> type:  # noqa: C901
    """KubernetesPodOperator, reading the pod's log and status before its clean-up deletes it."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from airflow_mlops._core.result import FAILED_PREFIX, SKIPPED_PREFIX, find_result
    from airflow_mlops.backends.kubernetes.api import bound_api_client

    class StagePodOperator(KubernetesPodOperator):
        """KubernetesPodOperator whose API client is bounded by ``api_timeout`` seconds (api.py)."""

        stage_result: dict[str, Any] | None = None
        stage_failure: str | None = None
        stage_skipped: str | None = None
        unschedulable: str | None = None
        termination: Any = None  # termination.Termination: Kubernetes ended the pod (OOMKilled, evicted...)
        pod_name_seen: str | None = None
        log_tail: list[str] = []

        def __init__(self, *, api_timeout: float = 60.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.api_timeout = api_timeout

        @cached_property
        def hook(self) -> Any:
            hook = KubernetesPodOperator.hook.func(self)
            bound_api_client(hook.api_client, self.api_timeout)
            return hook

        def post_complete_action(self, *, pod: Any, remote_pod: Any, **kwargs: Any) -> None:
            try:
                self._collect(pod, remote_pod)
            except Exception:  # reading back is best effort: clean-up must still happen
                self.log.warning("Could not read the pod's log and status back", exc_info=True)
            super().post_complete_action(pod=pod, remote_pod=remote_pod, **kwargs)

        def _collect(self, pod: Any, remote_pod: Any) -> None:
            if pod is None or remote_pod is None:
                return
            from airflow_mlops.backends.kubernetes.termination import termination_of

            self.pod_name_seen = remote_pod.metadata.name
            self.termination = termination_of(remote_pod)
            status = remote_pod.status
            for condition in (status.conditions or []) if status else []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    self.unschedulable = f"{condition.reason}: {condition.message}"
            if status is None or status.phase in (None, "Pending"):
                return
            # Raw bytes: kubernetes client 36 returns the text of a preloaded log as a str(bytes) repr.
            response = self.client.read_namespaced_pod_log(
                name=pod.metadata.name, namespace=pod.metadata.namespace, container=self.base_container_name,
                _preload_content=False,
            )
            lines = response.data.decode("utf-8", "replace").splitlines()
            self.log_tail = lines[-LOG_TAIL_LINES:]
            self.stage_result = find_result(lines)
            for line in lines:
                if line.startswith(FAILED_PREFIX):
                    self.stage_failure = line[len(FAILED_PREFIX):]
                elif line.startswith(SKIPPED_PREFIX):
                    self.stage_skipped = line[len(SKIPPED_PREFIX):]

    return StagePodOperator
