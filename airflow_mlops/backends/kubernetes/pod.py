"""Stages in Kubernetes pods: the pod runs ``python -m airflow_mlops.runtime`` with the stage spec
and its context, i.e. the very same stage code the batch backend runs in the worker.

The cncf-kubernetes provider's KubernetesPodOperator does the pod work (creation, log streaming,
clean-up). It is built inside ``execute()``, so parsing a DAG never imports the kubernetes
client: the DAG processor re-parses every 30 s.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from airflow_mlops._core.names import MAX_POD_NAME, object_name, pod_labels
from airflow_mlops._core.result import RESULT_MARKER
from airflow_mlops.backends.stage import StageOperator, stage_failed
from airflow_mlops.spec.models import KubernetesSettings

LOG_TAIL_LINES = 30


class KubernetesBackedOperator(StageOperator):
    """A stage whose work happens on a Kubernetes cluster.

    :param kubernetes: pod settings (image, namespace, connection, volumes, secrets, ...).

    The pod requests ``stage_resources`` (cpu / memory / whole GPUs) as both requests and limits.
    """

    def __init__(self, *, kubernetes: KubernetesSettings | dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.kubernetes = KubernetesSettings.model_validate(kubernetes)
        if not self.kubernetes.image:
            raise ValueError(f"{type(self).__name__}(task_id={self.task_id!r}): kubernetes.image is required")


class KubernetesStageOperator(KubernetesBackedOperator):
    """Run a built-in stage in a pod that requests the stage's resource profile."""

    ui_color = "#e5f5e0"
    _pod_op: Any = None  # the KubernetesPodOperator of the running try, for on_kill

    def pod_name(self, pipeline_id: str | None = None) -> str:
        """``<pipeline>-<stage>`` as a DNS name (KubernetesPodOperator appends a random suffix)."""
        return object_name(pipeline_id or self.pipeline_id or "stage", self.stage_name, max_len=MAX_POD_NAME)

    def pod_operator(self, arguments: list[str], pipeline_id: str | None = None) -> Any:
        """The KubernetesPodOperator that runs this stage (also what the unit tests inspect
        through ``build_pod_request_obj(dry_run=True)``)."""
        from kubernetes.client import models as k8s

        k = self.kubernetes
        wants_gpu = bool(self.stage_resources and self.stage_resources.gpu)
        quantities = {}
        if self.stage_resources:
            quantities = {name: str(value) for name, value in (
                ("cpu", self.stage_resources.cpu), ("memory", self.stage_resources.memory),
                ("nvidia.com/gpu", self.stage_resources.gpu if self.stage_resources.gpu else None),
            ) if value is not None}
        env = [k8s.V1EnvVar(name=name, value=value) for name, value in k.env.items()]
        env += [
            k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=ref.secret, key=ref.key)))
            for name, ref in k.secret_env.items()
        ]
        if "PYTHONPATH" not in k.env and self.has_dag():  # the pod imports the code the DAG sees
            from airflow_mlops._core.paths import code_paths, dags_folder

            paths = code_paths(self.dag.fileloc, dags_folder())
            if paths:
                env.append(k8s.V1EnvVar(name="PYTHONPATH", value=":".join(paths)))
        volumes = [
            k8s.V1Volume(name=f"data-{i}", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=v.claim, read_only=v.read_only))
            for i, v in enumerate(k.volumes)
        ]
        mounts = [k8s.V1VolumeMount(name=f"data-{i}", mount_path=v.mount_path, read_only=v.read_only)
                  for i, v in enumerate(k.volumes)]
        tolerations = [k8s.V1Toleration(**t.model_dump(exclude_none=True))
                       for t in [*k.tolerations, *(k.gpu_tolerations if wants_gpu else [])]]
        pipeline = pipeline_id or self.pipeline_id or ""
        return _pod_operator_class()(
            task_id=self.task_id,
            name=self.pod_name(pipeline),
            namespace=k.namespace,
            image=k.image,
            image_pull_policy=k.image_pull_policy,
            cmds=["python"],
            arguments=arguments,
            env_vars=env,
            container_resources=k8s.V1ResourceRequirements(requests=quantities, limits=quantities) if quantities else None,
            node_selector={**k.node_selector, **(k.gpu_node_selector if wants_gpu else {})} or None,
            tolerations=tolerations or None,
            volumes=volumes or None,
            volume_mounts=mounts or None,
            service_account_name=k.service_account,
            labels={**k.labels, **pod_labels(pipeline, self.stage_name)},
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
        )

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow_mlops.backends import runtime

        ctx.backend = "batch"  # inside the pod the stage runs its plain (pandas) code
        arguments = ["-m", "airflow_mlops.runtime", "--payload", runtime.encode_payload(self.stage, ctx)]
        pod_op = self._pod_op = self.pod_operator(arguments, ctx.pipeline_id)
        self.log.info("Running stage '%s' in pod %s/%s (image %s, resources %s)", ctx.stage_name,
                      self.kubernetes.namespace, pod_op.name, self.kubernetes.image, self.stage_resources)
        try:
            pod_op.execute(context)
        except Exception as exc:
            raise self._explain(pod_op, exc) from exc
        result = pod_op.stage_result
        if result is None:
            raise RuntimeError(f"the pod finished but printed no '{RESULT_MARKER.strip()}' line; see its log above")
        return result

    def _explain(self, pod_op: Any, exc: Exception) -> Exception:
        """A failure message people can act on: the stage's own verdict, the scheduler's reason
        for a pod that never started, or the pod's exit code and last log lines."""
        if pod_op.stage_failure:
            return stage_failed(f"stage '{self.stage_name}' failed in pod {pod_op.name}: {pod_op.stage_failure}")
        if pod_op.stage_skipped:
            from airflow.sdk.exceptions import AirflowSkipException

            return AirflowSkipException(pod_op.stage_skipped)
        if pod_op.unschedulable:
            return RuntimeError(
                f"pod {pod_op.name} was never scheduled within {int(self.kubernetes.schedule_timeout.total_seconds())}s: "
                f"{pod_op.unschedulable} (resources asked: {self.stage_resources}; check the node pool's capacity, "
                f"labels {self.kubernetes.gpu_node_selector} and taints)"
            )
        if pod_op.log_tail:
            tail = "\n".join(pod_op.log_tail)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return RuntimeError(f"stage '{self.stage_name}' failed in pod {pod_op.name} ({first}); last log lines:\n{tail}")
        return exc

    def on_kill(self) -> None:
        if self._pod_op is not None:
            self._pod_op.on_kill()


@lru_cache(maxsize=1)
def _pod_operator_class() -> type:
    """KubernetesPodOperator, reading the pod's log and status before its clean-up deletes it."""
    import json

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from airflow_mlops._core.result import FAILED_PREFIX, RESULT_MARKER, SKIPPED_PREFIX

    class StagePodOperator(KubernetesPodOperator):
        stage_result: dict[str, Any] | None = None
        stage_failure: str | None = None
        stage_skipped: str | None = None
        unschedulable: str | None = None
        log_tail: list[str] = []

        def post_complete_action(self, *, pod: Any, remote_pod: Any, **kwargs: Any) -> None:
            try:
                self._collect(pod, remote_pod)
            except Exception:  # reading back is best effort: clean-up must still happen
                self.log.warning("Could not read the pod's log and status back", exc_info=True)
            super().post_complete_action(pod=pod, remote_pod=remote_pod, **kwargs)

        def _collect(self, pod: Any, remote_pod: Any) -> None:
            if pod is None or remote_pod is None:
                return
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
            for line in lines:
                if line.startswith(RESULT_MARKER):
                    self.stage_result = json.loads(line[len(RESULT_MARKER):])
                elif line.startswith(FAILED_PREFIX):
                    self.stage_failure = line[len(FAILED_PREFIX):]
                elif line.startswith(SKIPPED_PREFIX):
                    self.stage_skipped = line[len(SKIPPED_PREFIX):]

    return StagePodOperator
