"""Gunicorn entry: ``gunicorn 'helm_api.wsgi:app'`` (the chart runs it so; ``helm-api`` serves
the same app with waitress).

Run ONE worker with threads (``--workers 1 --threads 8``): the queued follow-up of a running
helmsman Job lives in that worker's memory, and one worker keeps "at most one follow-up" true.
"""

import sys

from helm_api.__main__ import build_app
from poller.errors import ConfigError

try:
    app = build_app()
except ConfigError as exc:
    print(f"helm-api: config error: {exc}", file=sys.stderr)
    sys.exit(4)  # gunicorn's "app failed to load": the master stops instead of retrying
