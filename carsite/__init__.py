"""The carsite Django project.

The Celery app is in ``carsite/celery.py`` and is imported only where a task is defined, sent or consumed
(``reconstruct/tasks.py``, ``reconstruct/curation/tasks.py``, ``celery -A carsite``, which finds
``carsite.celery``), not by every process that loads Django: on Lambda (sync mode) nothing is queued, and
importing Celery, kombu and billiard was about a seventh of a cold start's imports.
"""
