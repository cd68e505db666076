"""Gunicorn entry: ``gunicorn 'helm_api.wsgi:app'``.

Run ONE worker with threads (``--workers 1 --threads 8``): the queued follow-up of a running
helmsman Job lives in that worker's memory, and one worker keeps "at most one follow-up" true.
"""

from helm_api.__main__ import build_app

app = build_app()
