"""Importable user code for the stage tests (callables named by import path in specs)."""

from __future__ import annotations


def make_frame(rows: int = 40):
    import pandas as pd

    return pd.DataFrame({"x": list(range(rows)), "noise": [None if i % 10 == 0 else i % 3 for i in range(rows)],
                         "label": [int(i >= rows // 2) for i in range(rows)]})


def threshold_model(train, test, target, features, params):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(**params).fit(train[features], train[target])
    return model, {"accuracy": float((model.predict(test[features]) == test[target]).mean()), "custom": 42.0}


def model_that_notes_its_gpus(train, test, target, features, params):
    """A trainer that records, on its MLflow run, the GPUs CUDA would see."""
    import os

    import mlflow

    mlflow.set_tag("seen.cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    return threshold_model(train, test, target, features, {"max_iter": 500})


def spend_per_segment(customers, orders):
    """A Spark transform: keyword DataFrames in, one DataFrame out."""
    from pyspark.sql import functions as F

    joined = customers.join(orders, customers.id == orders.customer_id, "left")
    return joined.groupBy("segment").agg(F.round(F.sum("amount"), 2).alias("spend")).orderBy("segment")


def broken_trainer(train, test, target, features, params):
    raise ZeroDivisionError("the trainer broke on purpose")


def model_that_notes_mlflow_credentials(train, test, target, features, params):
    """A trainer that records, on its MLflow run, the MLflow credentials its process was given:
    the user name, and a digest of the password (never the password itself)."""
    import hashlib
    import os

    import mlflow

    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    mlflow.set_tag("seen.mlflow_username", os.environ.get("MLFLOW_TRACKING_USERNAME", "<unset>"))
    mlflow.set_tag("seen.mlflow_password_sha256",
                   hashlib.sha256(password.encode()).hexdigest() if password is not None else "<unset>")
    return threshold_model(train, test, target, features, {"max_iter": 500})


def slow_trainer(train, test, target, features, params):
    """A trainer that notes each start in ``$TRAINER_STARTS`` (one line per process) and then takes
    ``$TRAINER_SECONDS`` seconds: long enough to break a server under it."""
    import os
    import time

    with open(os.environ["TRAINER_STARTS"], "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("TRAINER_SECONDS", "20")))
    return threshold_model(train, test, target, features, {"max_iter": 500})
