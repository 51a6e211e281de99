"""`make loadtest`: the real local stack (``manage.py runlocal``) under Locust; see ``loadtest/__main__.py``."""
