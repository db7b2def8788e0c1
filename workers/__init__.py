"""Job execution: the Celery app and its thin tasks, and ``execute_run`` (claim → trainer
subprocess → stream events into the store → finish). The API never imports this package."""
