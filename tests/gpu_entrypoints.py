"""Training entrypoints for the GpuTrainOperator tests (imported by path, in the training
subprocess). They train real scikit-learn models on CPU and write down what they saw (the
environment the operator set, the checkpoint folder) so the tests can check it.

Run as a module (``python -m tests.gpu_entrypoints --epochs 3``), this is also a training
*script* that logs its own model to the run named by ``MLFLOW_RUN_ID``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SEEN_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "AIRFLOW_MLOPS_CHECKPOINT_DIR", "AIRFLOW_MLOPS_PARAMS",
            "MLFLOW_RUN_ID")


def _note(checkpoint_dir: str, **extra) -> None:
    """Append what this try saw to ``tries.jsonl`` in the checkpoint folder."""
    record = {"env": {k: os.environ.get(k) for k in SEEN_ENV}, "checkpoint_dir": checkpoint_dir, **extra}
    with open(Path(checkpoint_dir) / "tries.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _data():
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    return train_test_split(pd.DataFrame(x), data.target, test_size=0.25, random_state=0, stratify=data.target)


def train_forest(params, checkpoint_dir):
    """(model, metrics, input_example) as a dict: no datasets configured, it loads its own."""
    from sklearn.ensemble import RandomForestClassifier

    x_train, x_test, y_train, y_test = _data()
    model = RandomForestClassifier(**params).fit(x_train, y_train)
    _note(checkpoint_dir)
    return {"model": model, "metrics": {"accuracy": float(model.score(x_test, y_test))}, "input_example": x_test.head(5)}


def train_on_frames(train, test, target, features, params):
    """The train stage's callable contract: DataFrames in, (model, metrics) out."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(**params).fit(train[features], train[target])
    return model, {"accuracy": float(model.score(test[features], test[target])), "train_rows": float(len(train))}


def resumable(params, checkpoint_dir):
    """Trains in 'epochs' and checkpoints after each; the first try crashes after epoch
    ``crash_after`` — a retry must resume from the checkpoint instead of starting over."""
    from sklearn.linear_model import SGDClassifier

    x_train, x_test, y_train, y_test = _data()
    state_file = Path(checkpoint_dir) / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"epoch": 0, "tries": 0}
    resumed_from = state["epoch"]
    state["tries"] += 1
    _note(checkpoint_dir, resumed_from=resumed_from)
    import pickle

    model_file = Path(checkpoint_dir) / "model.pkl"
    model = pickle.loads(model_file.read_bytes()) if model_file.exists() else SGDClassifier(random_state=0)
    classes = sorted(set(y_train))
    for epoch in range(state["epoch"] + 1, params["epochs"] + 1):
        model.partial_fit(x_train, y_train, classes=classes)
        model_file.write_bytes(pickle.dumps(model))
        state["epoch"] = epoch
        state_file.write_text(json.dumps(state))
        print(f"epoch {epoch} checkpointed", flush=True)
        if state["tries"] == 1 and epoch == params["crash_after"]:
            raise RuntimeError(f"simulated crash after epoch {epoch}")
    metrics = {"accuracy": float(model.score(x_test, y_test)), "resumed_from_epoch": float(resumed_from),
               "epochs": float(state["epoch"])}
    return {"model": model, "metrics": metrics, "input_example": x_test.head(3)}


def refuses(params):
    from airflow_mlops._core.errors import StageFailed

    raise StageFailed(f"the data is unusable for these params: {params}")


def main(argv: list[str]) -> int:
    """A training *script*: logs params, metrics and its model to the run in $MLFLOW_RUN_ID."""
    import argparse

    import mlflow
    from sklearn.tree import DecisionTreeClassifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--max-depth", type=int, default=3)
    args = parser.parse_args(argv)
    x_train, x_test, y_train, y_test = _data()
    _note(os.environ["AIRFLOW_MLOPS_CHECKPOINT_DIR"], argv=argv)
    with mlflow.start_run():  # attaches to MLFLOW_RUN_ID
        model = DecisionTreeClassifier(max_depth=args.max_depth, random_state=0).fit(x_train, y_train)
        mlflow.log_metric("accuracy", float(model.score(x_test, y_test)))
        import skops.io

        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        mlflow.sklearn.log_model(model, name="model", input_example=x_test.head(2), skops_trusted_types=trusted)
    print("script done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
