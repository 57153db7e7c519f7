"""The model a stream scores with: an MLflow pyfunc loaded once, its registry version resolved
once (an alias could move mid-run; the run keeps the version it started with)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("airflow_mlops.stream")


@dataclass
class ScoringModel:
    model: Any  # mlflow.pyfunc.PyFuncModel, or anything with .predict(DataFrame)
    uri: str  # what was loaded: models:/<name>/<version> for a registry URI
    version: str  # registry version, or the URI for an unregistered model
    name: str | None = None
    features: list[str] | None = None  # input columns from the signature, if it names them
    required: list[str] | None = None  # the signature's non-optional inputs
    float_features: list[str] | None = None  # signature inputs of type double/float
    feature_types: dict[str, str] | None = None  # signature input → MLflow type name ("double", "long"…)
    # The model's own predict without MLflow's per-call schema enforcement, offered only where
    # that enforcement is a no-op for a frame whose dtypes already match the signature (every
    # input a required double or long column); see BatchScorer.predict.
    unchecked_predict: Callable[[Any], Any] | None = None
    files: Any = None  # the downloaded model's folder, kept as long as the model

    def predict(self, frame: Any) -> Any:
        return self.model.predict(frame)


def resolve_model_uri(model_uri: str, client: Any) -> tuple[str, str | None, str]:
    """``models:/name@alias``, ``models:/name/latest``, ``models:/name/3`` →
    ``(models:/name/<version>, name, version)``; any other URI is returned as it is."""
    if not model_uri.startswith("models:/"):
        return model_uri, None, model_uri
    rest = model_uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    else:
        name, _, ref = rest.partition("/")
        if ref.isdigit():
            version = ref
        elif ref == "" or ref.lower() == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise LookupError(f"registered model '{name}' has no versions")
            version = str(max(int(v.version) for v in versions))
        else:  # a stage name (MLflow's deprecated stages API)
            found = client.get_latest_versions(name, stages=[ref])
            if not found:
                raise LookupError(f"registered model '{name}' has no version in stage '{ref}'")
            version = str(found[0].version)
    return f"models:/{name}/{version}", name, version


def load_scoring_model(model_uri: str, tracking_uri: str | None = None) -> ScoringModel:
    """Load the model once. With ``tracking_uri``, MLflow is reached through a client and
    explicit URIs only: MLflow's process-wide tracking and registry URIs are left as they are."""
    import tempfile

    import mlflow

    from airflow_mlops._core.compat import import_skops_io
    from airflow_mlops._core.mlflow import client_for

    client = client_for(tracking_uri)
    resolved, name, version = resolve_model_uri(model_uri, client)
    log.info("Loading model %s (from %s)", resolved, model_uri)
    import_skops_io()  # before MLflow loads a scikit-learn model: see there
    files = None
    if tracking_uri:
        # The version's storage location (a path, s3://…, mlflow-artifacts:/…), fetched with the
        # explicit store: models:/ URIs would go through MLflow's process-wide registry URI.
        source = client.get_model_version_download_uri(name, version) if name else resolved
        files = tempfile.TemporaryDirectory(prefix="airflow-mlops-model-")
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=files.name,
                                                     tracking_uri=tracking_uri)
        model = mlflow.pyfunc.load_model(local)
    else:
        model = mlflow.pyfunc.load_model(resolved)
    features = required = floats = types = None
    schema = model.metadata.get_input_schema() if model.metadata else None
    if schema is not None and schema.has_input_names():
        features = list(schema.input_names())
        required = list(schema.required_input_names())
        if not schema.is_tensor_spec():
            types = {n: getattr(t, "name", str(t)) for n, t in schema.input_types_dict().items()}
            floats = [n for n, t in types.items() if t in ("double", "float")]
    return ScoringModel(model=model, uri=resolved, version=version, name=name, features=features, required=required,
                        float_features=floats, feature_types=types,
                        unchecked_predict=_unchecked_predict(model, features, required, types), files=files)


def _unchecked_predict(model: Any, features: list[str] | None, required: list[str] | None,
                       types: dict[str, str] | None) -> Callable[[Any], Any] | None:
    """``PyFuncModel.predict`` enforces the signature on every call (milliseconds per 1000 rows of
    32 columns: more than a linear model's predict itself). When every input is a required double or long
    column, a DataFrame with exactly those columns, in order, as float64/int64 is what the
    enforcement would return unchanged: such frames may go to the model's predict function
    directly. Anything else (other types, optional inputs, params, type-hint signatures, an MLflow
    without ``_predict_fn``) keeps MLflow's own predict."""
    import inspect

    meta = getattr(model, "metadata", None)
    fn = getattr(model, "_predict_fn", None)
    if not (features and types and meta is not None and callable(fn)):
        return None
    if set(required or ()) != set(features) or not all(types.get(f) in ("double", "long") for f in features):
        return None
    try:
        if meta.get_params_schema() is not None or meta._is_signature_from_type_hint() \
                or meta._is_type_hint_from_example():
            return None
        takes_params = "params" in inspect.signature(fn).parameters
    except Exception:
        return None
    return (lambda frame: fn(frame, params=None)) if takes_params else fn
