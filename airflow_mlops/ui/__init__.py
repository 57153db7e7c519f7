"""MLOps state inside the Airflow UI: an Airflow plugin (``ui.plugin``) serving read-only pages
and a JSON API (``ui.app``) from MLflow (``ui.data``), with server-side SVG charts (``ui.charts``)."""
