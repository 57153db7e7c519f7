"""Kafka helpers that need no Airflow: the embedded broker for demos and tests
(``python -m airflow_mlops.kafka.broker``)."""
