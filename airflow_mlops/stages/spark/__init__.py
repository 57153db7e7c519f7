"""Stage code for the Spark engine. The same code runs on an embedded session in the worker and
under spark-submit on a cluster; :func:`session` hides which."""
