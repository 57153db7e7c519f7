"""The package's optional extras, in one table: which capability needs which extra, and which
importable modules say that extra is installed.

A pipeline that needs an extra which is not installed is an invalid pipeline (at the YAML line
that needs it: ``stages.registry.extra_problems``), an operator constructed without its extra
fails at DAG parse (:func:`require`), and ``airflow-mlops info`` / the provider's description list
what is installed. All of them say the same words: :func:`missing_message`.

Presence is checked with ``importlib.util.find_spec``: it locates a module without importing it,
so the check stays cheap at every DAG parse (a dotted name imports its parent packages only:
``airflow.providers.apache`` for the Spark provider, a namespace package).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

DISTRIBUTION = "airflow-mlops"


@dataclass(frozen=True)
class Extra:
    """One extra: ``modules`` must all be importable; ``brings`` and ``for_`` are for people
    (the Installing page, ``airflow-mlops info``)."""

    name: str
    modules: tuple[str, ...]
    brings: str
    for_: str


EXTRAS: dict[str, Extra] = {e.name: e for e in (
    Extra("apache-spark", ("pyspark", "airflow.providers.apache.spark"),
          "pyspark 4.2 and apache-airflow-providers-apache-spark",
          "the spark backend and SparkFeatureOperator"),
    Extra("cncf-kubernetes", ("airflow.providers.cncf.kubernetes", "kubernetes"),
          "apache-airflow-providers-cncf-kubernetes (and the kubernetes client)",
          "the kubernetes backend and GpuTrainOperator(backend='kubernetes')"),
    Extra("apache-kafka", ("kafka", "confluent_kafka", "airflow.providers.apache.kafka",
                           "airflow.providers.common.messaging"),
          "kafka-python[crc32c], confluent-kafka, apache-airflow-providers-apache-kafka and -common-messaging",
          "serve mode 'stream', StreamInferenceOperator and KafkaLagSensor"),
    Extra("amazon", ("airflow.providers.amazon", "s3fs"),
          "apache-airflow-providers-amazon[s3fs] (Airflow's s3:// filesystem and aws connections)",
          "stage data, backups and retention on s3:// (data_dir, input paths, outputs)"),
    Extra("google", ("airflow.providers.google", "gcsfs"),
          "apache-airflow-providers-google and gcsfs (Airflow's gs:// filesystem)",
          "stage data on gs://"),
    Extra("microsoft-azure", ("airflow.providers.microsoft.azure", "adlfs"),
          "apache-airflow-providers-microsoft-azure and adlfs (Airflow's abfs:// filesystem)",
          "stage data on abfs:// and az://"),
    Extra("gpu", ("pynvml", "prometheus_client"),
          "nvidia-ml-py (NVML) and prometheus-client",
          "GPU requests on the batch backend, gpu_metrics' Prometheus export, GpuTrainOperator and "
          "GpuAvailableSensor"),
)}


class MissingExtra(ImportError):
    """A capability is used whose extra is not installed. An ImportError, so DAG files and
    callers that already treat a missing library as an import problem keep doing so."""

    def __init__(self, extra: str, by: str):
        self.extra, self.by = extra, by
        super().__init__(missing_message(extra, by))


def _found(module: str) -> bool:
    if sys.modules.get(module) is not None:  # imported already (or a stand-in put there: a test's fake NVML)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty: the extra is installed)."""
    return [m for m in EXTRAS[extra].modules if not _found(m)]


def installed(extra: str) -> bool:
    return not missing_modules(extra)


def install_command(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing_message(extra: str, by: str) -> str:
    """``by`` needs the ``extra`` extra, which is not installed, and the command that installs it."""
    absent = ", ".join(missing_modules(extra)) or "none"
    return (f"{by} needs the '{extra}' extra of {DISTRIBUTION}, which is not installed here (missing: {absent}): "
            f"run {install_command(extra)} (with the constraints file of your Airflow version)")


def require(extra: str, by: str) -> None:
    """Raise MissingExtra unless ``extra`` is installed; ``by`` names what needs it
    (e.g. ``"SparkFeatureOperator"``)."""
    if not installed(extra):
        raise MissingExtra(extra, by)


def state() -> dict[str, bool]:
    """Each extra: installed or not."""
    return {name: installed(name) for name in EXTRAS}


def describe() -> str:
    """One line: which extras are installed and which are missing."""
    found = state()
    have = [n for n, ok in found.items() if ok]
    lack = [n for n, ok in found.items() if not ok]
    return (f"Extras installed: {', '.join(have) or 'none'}; not installed: {', '.join(lack) or 'none'}"
            + (f" ({install_command(','.join(lack))})" if lack else ""))
