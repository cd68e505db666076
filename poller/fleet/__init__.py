"""Fleet rollouts across machines, coordinated through etcd (see :mod:`poller.fleet.state`)."""

from __future__ import annotations

from poller.fleet.etcd import EtcdClient
from poller.fleet.state import FleetState
from poller.settings.fleet import FleetConfig


def open_state(cfg: FleetConfig) -> FleetState:
    return FleetState(EtcdClient(cfg.etcd.endpoints, timeout=cfg.etcd.timeout), cfg)


def snapshot(state: FleetState) -> dict:
    """The three views (current, staging, deploy) plus each service's rollout."""
    return {"current": state.current(), "staging": state.staging(), "deploy": state.deploy(),
            "rollouts": {s: ro.as_dict() for s, ro in state.rollouts().items()}}
