"""``python -m airflow_mlops.runtime``: the command pods and spark-submit run (the code lives in
``airflow_mlops.backends.runtime``; this module path is what running pods and docs name)."""

from __future__ import annotations

import sys

from airflow_mlops.backends.runtime import main

if __name__ == "__main__":
    sys.exit(main())
