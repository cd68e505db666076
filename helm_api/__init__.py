"""The helm API: start helmsman runs in the cluster, by hand or from the poller.

``create_app(config, kube)`` is the only way to build the Flask app: it registers the one
blueprint (:mod:`helm_api.api`) on an app with the shared HTTP toolkit (:mod:`poller.httpapi`:
bearer check, JSON errors, the error-to-status table). The entry points
(:mod:`helm_api.__main__`, :mod:`helm_api.wsgi`) read the environment and pass a config in.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from helm_api.api import REALM, HelmMetrics, blueprint
from helm_api.config import HelmApiConfig
from helm_api.jobs import JobRunner
from helm_api.kube import Kube, api_client_from
from poller import httpapi
from poller.errors import PermanentError, UpstreamError
from poller.httpapi import ApiError
from poller.logs import get_logger

log = get_logger(__name__)

#: Largest request body; the server (waitress) and the app both refuse larger ones with 413.
MAX_BODY = 64 * 1024

#: The helm API's names for what its one upstream (the cluster) does; statuses come from
#: :data:`poller.httpapi.STATUS` like the poller API's.
CODES: dict[type, str] = {UpstreamError: "cluster_unavailable", PermanentError: "cluster_refused"}

__all__ = ["MAX_BODY", "ApiError", "create_app"]


class _LazyKube:
    """Builds the real client on first use, so an app without a reachable cluster still
    serves /healthz, /openapi.json and 401/403s."""

    def __init__(self, config: HelmApiConfig):
        self._config = config
        self._kube: Kube | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name):
        with self._lock:
            if self._kube is None:
                # config missing or unreadable: an UpstreamError (503) from the builder
                self._kube = Kube(api_client_from(kubeconfig=self._config.kubeconfig,
                                                  in_cluster=self._config.in_cluster))
        return getattr(self._kube, name)


def create_app(config: HelmApiConfig | None = None, kube: Any = None) -> Flask:
    """Build the app. ``kube`` is a :class:`~helm_api.kube.Kube`, a
    ``kubernetes.client.ApiClient``, or ``None`` to use the config's kubeconfig / in-cluster."""
    config = config or HelmApiConfig()
    if kube is None:
        kube = _LazyKube(config)
    elif not isinstance(kube, Kube) and hasattr(kube, "call_api"):
        kube = Kube(kube)
    app = Flask(__name__, static_folder=None)
    httpapi.install(app, realm=REALM, max_body=MAX_BODY, log=log, codes=CODES)
    metrics = HelmMetrics()
    runner = JobRunner(kube, config,
                       on_created=lambda env, trigger, name: metrics.jobs.labels(env, trigger).inc())
    app.extensions["helm_api"] = {"config": config, "runner": runner, "kube": kube,
                                  "metrics": metrics}
    app.register_blueprint(blueprint)
    return app
