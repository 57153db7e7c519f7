"""Sensors: Kafka consumer lag (``airflow_mlops.sensors.kafka``). Heavy clients are imported in
``poke()``, never when a DAG file is parsed."""
