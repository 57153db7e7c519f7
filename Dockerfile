# Airflow image with airflow-mlops installed, used by every Airflow service in docker-compose.yaml.
#
#   docker compose up --build
#
# The official image already ships the Postgres driver (psycopg2) and the Airflow CLI.
FROM apache/airflow:3.3.2-python3.11

# Java for the Spark backend's embedded local[*] session (SparkFeatureOperator's default).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/default-java

# Pipeline stages hand each other file paths under AIRFLOW_MLOPS_HOME. docker-compose mounts a
# named volume here; creating the folder owned by the airflow user makes the empty volume
# inherit that ownership on first use.
RUN install -d -o airflow -g 0 -m 775 /opt/airflow/mlops
ENV AIRFLOW_MLOPS_HOME=/opt/airflow/mlops

USER airflow

# Only what the package build needs (pyproject.toml names README.md as the readme): the dags and
# example pipelines are bind-mounted by docker-compose, so editing them needs no rebuild.
WORKDIR /opt/airflow/airflow-mlops
COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 airflow_mlops ./airflow_mlops

# Pin apache-airflow to the image's own version so installing the package never up- or
# downgrades Airflow itself (the official image's documented way to add packages).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" ".[all]"

WORKDIR /opt/airflow
