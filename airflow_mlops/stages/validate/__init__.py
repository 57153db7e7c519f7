"""validate: thresholds on the candidate version, then champion vs challenger; the winner gets
the alias (aliases, not the deprecated stages API), the replaced champion keeps a rollback
alias, and the decision is tagged on both versions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed, StageSkipped
from airflow_mlops._core.mlflow import alias_version, record_serving_aliases
from airflow_mlops._core.mlflow import client as mlflow_client

if TYPE_CHECKING:
    from airflow_mlops.spec.models import ValidateStage

DECISION_TAG = "airflow_mlops.decision"
DETAIL_TAG = "airflow_mlops.decision_detail"
# What the gate judged the version on, as JSON: {"compare": {metric: "higher"|"lower"},
# "thresholds": {metric: {"min": x|null, "max": y|null}}}. The Airflow UI charts these metrics
# first and draws the thresholds.
GATE_TAG = "airflow_mlops.gate"
APPROVAL_TAG = "airflow_mlops.approval"  # JSON {decision: approved|rejected, by, at, timed_out}
AWAITING = "awaiting-approval"  # the decision while a person has not answered
APPROVE, REJECT = "Approve", "Reject"  # the options of the approval form
MAX_REJUDGE = 5


def run(spec: "ValidateStage", ctx: StageContext) -> dict[str, Any]:
    name, version = ctx.find("model_name"), str(ctx.find("model_version"))
    client = mlflow_client(ctx.mlflow)
    metrics = _metrics(client, name, version)
    # Read before anything is tagged or moved: a tracking server that fails here fails the stage
    # (retryable for 5xx and time-outs, not for 401/403) with nothing changed in the registry.
    champion = _current(client, name, spec.alias)

    failures = threshold_failures(spec, metrics, ctx)
    client.set_model_version_tag(name, version, GATE_TAG, gate_json(spec))
    client.set_model_version_tag(name, version, "airflow_mlops.validation", "failed" if failures else "passed")
    if failures:
        # Recorded as a decision, like a lost comparison: the version pages show why it was refused.
        detail = "failed its thresholds: " + "; ".join(failures)
        client.set_model_version_tag(name, version, DECISION_TAG, "rejected")
        client.set_model_version_tag(name, version, DETAIL_TAG, detail)
        raise StageFailed(f"model '{name}' version {version} failed validation: " + "; ".join(failures))

    if spec.approval is not None:
        # A person decides (the group's 'approval' task, which moves the alias on Approve).
        detail = _judge(spec, client, name, version, metrics, champion, ctx)
        client.set_model_version_tag(name, version, DECISION_TAG, AWAITING)
        client.set_model_version_tag(name, version, DETAIL_TAG, detail)
        ctx.log.info("Model '%s' version %s passed the gate (%s); waiting for approval before '%s' moves",
                     name, version, detail, spec.alias)
        return {"model_name": name, "model_version": version, "alias": spec.alias, "champion": champion,
                "gate_detail": detail, "model_uri": f"models:/{name}/{version}"}
    return _promote_judged(spec, client, name, version, metrics, champion, ctx)


def _promote_judged(spec: "ValidateStage", client: Any, name: str, version: str, metrics: dict[str, float],
                    champion: str | None, ctx: StageContext, approved: str = "") -> dict[str, Any]:
    """Judge ``version`` against the champion and move the alias to it (StageSkipped/StageFailed
    when it loses); ``approved`` is added to the recorded detail."""
    # Several pipelines may train into one registered model and compete for its champion: the
    # champion is read again just before the alias moves, and a candidate judged against a
    # champion that another pipeline's validate replaced meanwhile is judged again.
    for _ in range(MAX_REJUDGE):
        detail = _judge(spec, client, name, version, metrics, champion, ctx)
        now = _current(client, name, spec.alias)
        if now == champion:
            break
        ctx.log.warning("The '%s' alias moved from version %s to %s while version %s was judged (another run "
                        "promoted it): judging again", spec.alias, champion, now, version)
        champion = now
    else:
        raise StageFailed(f"model '{name}': the '{spec.alias}' alias kept moving while version {version} was "
                          f"judged ({MAX_REJUDGE} times): nothing promoted")
    promote(client, name, version, champion, spec.alias, spec.previous_alias, detail + approved)
    ctx.log.info("Model '%s' version %s passed; alias '%s' now points at it", name, version, spec.alias)
    return {
        "model_name": name,
        "model_version": version,
        "alias": spec.alias,
        "previous_champion": champion if champion != version else None,
        # Pinned to the version, not the alias: the alias may move before serving runs.
        "model_uri": f"models:/{name}/{version}",
    }


def conclude(spec: "ValidateStage", ctx: StageContext, judged: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """After the approval form: ``judged`` is the group's 'run' result, ``answer`` the human-in-the-loop
    response (``{chosen_options, responded_by_user: {id, name} | None, responded_at}``; no user:
    the timeout's default). Approve: judged again against the champion of now (it may have moved
    while the form waited), then promoted, "approved by <user> at <time>" in the recorded detail.
    Reject or no answer: recorded as rejected, StageSkipped/StageFailed (``on_reject``)."""
    name, version = judged["model_name"], str(judged["model_version"])
    client = mlflow_client(ctx.mlflow)
    user = answer.get("responded_by_user") or {}
    who = user.get("name") or user.get("id")
    when = str(answer.get("responded_at") or "")[:19].replace("T", " ")
    chosen = (answer.get("chosen_options") or [REJECT])[0]
    record = {"decision": "approved" if chosen == APPROVE else "rejected", "by": who, "at": when,
              "timed_out": who is None}
    client.set_model_version_tag(name, version, APPROVAL_TAG, json.dumps(record))
    if chosen != APPROVE:
        why = (f"rejected by {who} at {when} UTC" if who else
               f"no answer within {spec.approval.timeout.total_seconds() / 3600:g} h: rejected (the default)"
               if spec.approval else "no answer: rejected (the default)")
        client.set_model_version_tag(name, version, DECISION_TAG, "rejected")
        client.set_model_version_tag(name, version, DETAIL_TAG, f"{judged.get('gate_detail', '')}; {why}")
        message = f"model '{name}' version {version} {why}; '{spec.alias}' stays on version {judged.get('champion')}"
        ctx.log.info("Promotion rejected: %s", message)
        raise (StageSkipped if spec.on_reject == "skip" else StageFailed)(message)
    ctx.log.info("Promotion approved by %s at %s UTC", who, when)
    metrics = _metrics(client, name, version)
    return _promote_judged(spec, client, name, version, metrics, _current(client, name, spec.alias), ctx,
                           approved=f"; approved by {who} at {when} UTC")


def _judge(spec: "ValidateStage", client: Any, name: str, version: str, metrics: dict[str, float],
           champion: str | None, ctx: StageContext) -> str:
    """The decision's detail when ``version`` may take the alias from ``champion``; a lost
    comparison tags both versions and raises StageSkipped or StageFailed (``on_reject``)."""
    if not (spec.compare and champion is not None and champion != version):
        return "first version to pass" if champion is None else "passed the thresholds"
    wins, lines = compare(spec, metrics, _metrics(client, name, champion))
    detail = f"version {version} vs champion {champion}: " + "; ".join(lines)
    if not wins:
        client.set_model_version_tag(name, version, DECISION_TAG, "rejected")
        client.set_model_version_tag(name, version, DETAIL_TAG, detail)
        client.set_model_version_tag(name, champion, DECISION_TAG, "defended")
        client.set_model_version_tag(name, champion, DETAIL_TAG, detail)
        message = f"model '{name}' {detail}; '{spec.alias}' stays on version {champion}"
        ctx.log.info("Challenger rejected: %s", message)  # in the open log, before Airflow's own groups
        raise (StageSkipped if spec.on_reject == "skip" else StageFailed)(message)
    ctx.log.info("Challenger wins: %s", detail)
    return detail


def gate_json(spec: "ValidateStage") -> str:
    """The value of ``GATE_TAG`` for ``spec``."""
    return json.dumps({"compare": {m: rule.direction for m, rule in spec.compare.items()},
                       "thresholds": {m: {"min": b.min, "max": b.max} for m, b in spec.thresholds.items()}})


def threshold_failures(spec: "ValidateStage", metrics: dict[str, float], ctx: StageContext) -> list[str]:
    failures = []
    for metric in [*spec.thresholds, *spec.compare]:
        if metric not in metrics:
            failures.append(f"{metric} was not logged (logged: {', '.join(sorted(metrics)) or 'none'})")
    for metric, bound in spec.thresholds.items():
        if metric not in metrics:
            continue
        value = metrics[metric]
        if bound.min is not None and value < bound.min:
            failures.append(f"{metric} = {value:.4g} is below the minimum {bound.min:g}")
        if bound.max is not None and value > bound.max:
            failures.append(f"{metric} = {value:.4g} is above the maximum {bound.max:g}")
        ctx.log.info("%s = %.4g (min %s, max %s)", metric, value, bound.min, bound.max)
    return sorted(set(failures), key=failures.index)


def compare(spec: "ValidateStage", candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, list[str]]:
    """Does the candidate beat the champion on every compared metric? With one line per metric."""
    wins, lines = True, []
    for metric, rule in spec.compare.items():
        new, old = candidate[metric], champion.get(metric)
        if old is None:  # the champion never logged it: nothing to defend
            lines.append(f"{metric} {new:.4g} (champion has none)")
            continue
        gain = new - old if rule.direction == "higher" else old - new
        needed = rule.min_improvement * abs(old) if rule.relative else rule.min_improvement
        ok = gain >= needed if needed > 0 else gain >= 0
        wins &= ok
        need = f"{rule.min_improvement:.2%} of it" if rule.relative else f"{rule.min_improvement:g}"
        lines.append(f"{metric} {new:.4g} vs {old:.4g} ({rule.direction} is better, gain {gain:+.4g}, "
                     f"needed {need}: {'ok' if ok else 'not enough'})")
    return wins, lines


def promote(client: Any, name: str, version: str, champion: str | None, alias: str, previous_alias: str, detail: str) -> None:
    record_serving_aliases(client, name, alias, previous_alias)
    if champion is not None and champion != version:
        client.set_registered_model_alias(name, previous_alias, champion)
        client.set_model_version_tag(name, champion, DECISION_TAG, "replaced")
        client.set_model_version_tag(name, champion, DETAIL_TAG, f"replaced by version {version}: {detail}")
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, DECISION_TAG, "promoted")
    client.set_model_version_tag(name, version, DETAIL_TAG, detail)


def rollback(client: Any, name: str, alias: str = "champion", previous_alias: str = "previous-champion") -> tuple[str, str]:
    """Move ``alias`` back to the version behind ``previous_alias`` (and that alias to the version
    rolled back from, so a second rollback undoes the first). Returns (from, to)."""
    current, previous = _current(client, name, alias), _current(client, name, previous_alias)
    if previous is None:
        raise StageFailed(f"model '{name}' has no '{previous_alias}' alias to roll back to")
    client.set_registered_model_alias(name, alias, previous)
    if current is not None:
        client.set_registered_model_alias(name, previous_alias, current)
        client.set_model_version_tag(name, current, DECISION_TAG, "rolled-back")
    client.set_model_version_tag(name, previous, DECISION_TAG, "restored")
    return current or "-", previous


def _current(client: Any, name: str, alias: str) -> str | None:
    """The version behind ``alias`` of the registered model ``name``; None only when the registry
    answers that the model has no such alias (``_core.mlflow.alias_version``). Any error reading it — a 5xx, a time-out, a 401/403 — is raised
    as it is: the stage's tracking-server guard turns it into one DependencyFailed, and nothing
    is promoted on a guess."""
    return alias_version(client, name, alias)


def _metrics(client: Any, name: str, version: str) -> dict[str, float]:
    return client.get_run(client.get_model_version(name, version).run_id).data.metrics
