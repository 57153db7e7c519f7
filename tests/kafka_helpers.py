"""Shared by the Kafka tests: one embedded broker per test session (tansu never frees memory),
unique names, produce/read helpers and MLflow pyfunc models registered in a SQLite store."""

from __future__ import annotations

import atexit
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterable

from airflow_mlops.kafka import topics
from airflow_mlops.kafka.broker import EmbeddedBroker
from airflow_mlops.kafka.topics import headers  # noqa: F401 (the tests import it from here)

# tansu makes a group join wait session_timeout_ms / 2: keep joins at ~3 s in tests.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

_BROKER: EmbeddedBroker | None = None


def shared_broker() -> EmbeddedBroker:
    """The session's broker, started on first use and stopped by PID at interpreter exit."""
    global _BROKER
    if _BROKER is None or _BROKER.process is None or _BROKER.process.poll() is not None:
        _BROKER = EmbeddedBroker().start()
        atexit.register(_BROKER.stop)
    return _BROKER


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def config(broker: EmbeddedBroker) -> dict[str, Any]:
    return {"bootstrap_servers": broker.bootstrap_servers}


def produce(broker: EmbeddedBroker, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    return topics.produce(broker.bootstrap_servers, topic, items)


def produce_json(broker: EmbeddedBroker, topic: str, rows: dict[str, dict[str, Any]]) -> int:
    """``{key: json object}`` → one record each."""
    return produce(broker, topic, ((k.encode(), json.dumps(v).encode()) for k, v in rows.items()))


def read_all(broker: EmbeddedBroker, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of a topic, up to each partition's highwater mark at the time of reading."""
    return topics.read_to_end(broker.bootstrap_servers, topic, timeout)


def keyed(records: list[Any]) -> dict[str, Any]:
    return {r.key.decode(): json.loads(r.value) for r in records}


# -- models ---------------------------------------------------------------------------------------


# Models from code (MLflow's recommended way): each source is logged as the model itself.
_MODEL_SOURCE = """
import time

import mlflow


class Linear(mlflow.pyfunc.PythonModel):
    \"\"\"prediction = 2·a + b: outputs known exactly.\"\"\"

    def predict(self, context, model_input, params=None):
        return (2 * model_input["a"] + model_input["b"]).to_numpy()


class SlowLinear(Linear):
    \"\"\"The same, sleeping 50 ms per predict call, so a run lasts long enough to be interrupted.\"\"\"

    def predict(self, context, model_input, params=None):
        time.sleep(0.05)
        return super().predict(context, model_input, params)


class Picky(Linear):
    \"\"\"The same, refusing any batch with a negative a.\"\"\"

    def predict(self, context, model_input, params=None):
        if (model_input["a"] < 0).any():
            raise ValueError("a must not be negative")
        return super().predict(context, model_input, params)


mlflow.models.set_model({cls}())
"""
LINEAR, SLOW_LINEAR, PICKY = "Linear", "SlowLinear", "Picky"


def register_pyfunc(tracking_uri: str, name: str, model: str, alias: str = "champion") -> str:
    """Log and register one of the models above (LINEAR, SLOW_LINEAR, PICKY) with a signature
    (a, b: double → double); set ``alias``."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    example = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]})
    signature = infer_signature(example, pd.Series([2.5, 4.25]))
    artifacts = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts"
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("stream-tests") or None
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "stream-tests", artifact_location=str(artifacts))
    code = artifacts.parent / f"model_{model.lower()}.py"
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text(textwrap.dedent(_MODEL_SOURCE).replace("{cls}", model))
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), signature=signature,
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    return version


def register_sklearn(tracking_uri: str, name: str, alias: str = "champion") -> tuple[str, Any]:
    """A LogisticRegression on two features (a, b), registered; returns (version, fitted model)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (X["a"] + 0.5 * X["b"] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    artifacts = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts"
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("stream-tests-sk")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "stream-tests-sk", artifact_location=str(artifacts))
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(X, model.predict(X)),
                                        registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    return version, model
