"""Every pipeline YAML under the folder becomes a DAG; a broken file shows up as an
'invalid-pipeline' DAG carrying its errors, and every other pipeline still loads.

In your own deployment this is simply ``load_pipelines(globals())``, which reads the YAMLs beside
this file. This repository keeps its example pipelines in ``example_configs/``.
"""

from pathlib import Path

from airflow_mlops import load_pipelines

load_pipelines(globals(), Path(__file__).resolve().parent.parent / "example_configs")
