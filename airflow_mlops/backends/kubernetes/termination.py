"""Why Kubernetes ended a stage's pod, when the stage itself did not say: its container killed for
memory (``OOMKilled``), the pod evicted, preempted, or lost with its node. Each becomes the
task's first line and the right retry decision (``_core.outcome``):

- ``OOMKilled``: no blind retry: a retry with the same memory limit is killed again. The message
  names the limit and what to raise.
- evicted, preempted, node lost or shut down: not the stage's fault: retried, in a new pod.

A training pod's end is also recorded in MLflow (``termination_error``'s ``training``), on the try's run or a
small FAILED run: a try that registered no version still shows on the Models page.

Where Kubernetes says it: the pod's ``status.reason`` (``Evicted``, ``Preempting``, ``NodeLost``,
``Shutdown``...), its ``DisruptionTarget`` condition (Kubernetes 1.26+:
``PreemptionByScheduler``, ``DeletionByTaintManager``, ``EvictionByEvictionAPI``,
``TerminationByKubelet``), or a container's ``state.terminated.reason`` (``OOMKilled``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

# status.reason of a pod Kubernetes ended from outside, and how a person says it.
POD_REASONS = {
    "Evicted": "evicted", "Preempting": "preempted", "NodeLost": "lost with its node",
    "Shutdown": "stopped by its node's shutdown", "NodeShutdown": "stopped by its node's shutdown",
    "Terminated": "stopped by its node's shutdown", "UnexpectedAdmissionError": "refused by its node",
}
DISRUPTIONS = {
    "PreemptionByScheduler": "preempted", "PreemptionByKubeScheduler": "preempted",
    "DeletionByTaintManager": "lost with its node (tainted NoExecute)", "EvictionByEvictionAPI": "evicted",
    "DeletionByPodGC": "lost with its node", "TerminationByKubelet": "stopped by its node",
}


class Termination(NamedTuple):
    """``reason``: Kubernetes' word (``OOMKilled``, ``Evicted``...); ``what``: in a person's words;
    ``detail``: Kubernetes' message or the exit code; ``out_of_memory``: the container hit its
    memory limit (no retry), else the pod was ended from outside (retried)."""

    reason: str
    what: str
    detail: str
    out_of_memory: bool


def termination_of(pod: Any) -> Termination | None:
    """Why Kubernetes ended ``pod`` (a ``V1Pod`` as read back from the API server), or None when
    it ended by itself (its own exit code says the rest)."""
    status = getattr(pod, "status", None)
    if status is None:
        return None
    for container in status.container_statuses or []:
        terminated = getattr(getattr(container, "state", None), "terminated", None)
        if terminated is not None and terminated.reason == "OOMKilled":
            return Termination("OOMKilled", "killed for memory", f"exit code {terminated.exit_code}", True)
    if status.reason in POD_REASONS:
        return Termination(status.reason, POD_REASONS[status.reason], status.message or "", False)
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True" and condition.reason in DISRUPTIONS:
            return Termination(condition.reason, DISRUPTIONS[condition.reason], condition.message or "", False)
    return None


def termination_error(ended: Termination, *, stage_name: str, pod: str, memory: str | None,
                      log_tail: list[str], training: tuple[Any, dict[str, str]] | None = None,
                      log: Any = None) -> Exception:
    """The task's error for ``ended``: a refusal (no retry) for OOMKilled, naming ``memory`` (the
    container's limit, e.g. ``1Gi``) and what to raise; a RuntimeError (retried) otherwise.
    ``training``: the ``(MlflowTarget, Airflow run tags)`` of the training the pod ran, where the
    end is recorded, with the message but not the log tail (``stages.train.failures``: best
    effort, never raises)."""
    from airflow_mlops._core.outcome import failed

    detail = f": {ended.detail}" if ended.detail else ""
    if ended.out_of_memory:
        limit = f"its memory limit of {memory}" if memory else "its memory limit"
        message = (f"stage '{stage_name}' ran out of memory: Kubernetes killed pod {pod} (OOMKilled{detail}) at "
                   f"{limit}. A retry with the same limit would be killed again: raise the stage's "
                   "resources.memory, or give it a resource profile with more")
    else:
        message = (f"stage '{stage_name}': pod {pod} was {ended.what} by Kubernetes ({ended.reason}{detail}), "
                   "not by the stage: Airflow's retries apply, each in a new pod")
    if training is not None:
        from airflow_mlops.stages.train.failures import record_failure

        record_failure(training[0], training[1], reason=ended.reason, message=message, log=log)
    tail = ("; last log lines:\n" + "\n".join(log_tail)) if log_tail else ""
    return (failed if ended.out_of_memory else RuntimeError)(message + tail)
