"""A narrow etcd v3 client over the JSON gateway (``/v3/...``), nothing else.

Keys and values are base64 on the wire; int64 fields come back as strings and zero values are
left out (proto3 JSON), so every read here defaults them. Endpoints are tried in order; a
connection failure or 5xx is an :class:`~poller.errors.UpstreamError` (retry later).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests

from poller.errors import UpstreamError
from poller.http import make_session, request

UPSTREAM = "etcd"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value) if self.value else None


@dataclass(frozen=True)
class Compare:
    """One txn condition: ``target`` is 'MOD', 'CREATE', 'VERSION' or 'VALUE'."""

    key: str
    target: str
    result: str
    value: int | str

    def wire(self) -> dict:
        field = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version",
                 "VALUE": "value"}[self.target]
        value = _b64(str(self.value)) if self.target == "VALUE" else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: value}


def put_op(key: str, value: str, lease: int = 0) -> dict:
    op: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        op["lease"] = str(lease)
    return {"request_put": op}


def delete_op(key: str, *, prefix: bool = False) -> dict:
    op = {"key": _b64(key)}
    if prefix:
        op["range_end"] = _b64(prefix_end(key))
    return {"request_delete_range": op}


class EtcdClient:
    def __init__(self, endpoints: Iterable[str], *, timeout: float = 5.0,
                 session: requests.Session | None = None):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.session = session or make_session(UPSTREAM, timeout=(min(timeout, 3.0), timeout))

    def _call(self, path: str, body: dict) -> dict:
        last: UpstreamError | None = None
        for endpoint in self.endpoints:
            try:
                resp = request(self.session, "POST", f"{endpoint}/v3/{path}", upstream=UPSTREAM,
                               data=json.dumps(body))
            except UpstreamError as exc:
                last = exc
                continue
            return resp.json()
        assert last is not None
        raise last

    # -- kv -------------------------------------------------------------------------
    def range(self, key: str, *, prefix: bool = False) -> tuple[list[KV], int]:
        """The keys at ``key`` (or under it, with ``prefix``) and the store revision."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        out = self._call("kv/range", body)
        kvs = [KV(key=_unb64(kv["key"]), value=_unb64(kv.get("value")),
                  create_revision=int(kv.get("create_revision", 0)),
                  mod_revision=int(kv.get("mod_revision", 0)), lease=int(kv.get("lease", 0)))
               for kv in out.get("kvs", [])]
        return kvs, int(out.get("header", {}).get("revision", 0))

    def get(self, key: str) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: str, *, lease: int = 0) -> None:
        self._call("kv/put", put_op(key, value, lease)["request_put"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        out = self._call("kv/deleterange", delete_op(key, prefix=prefix)["request_delete_range"])
        return int(out.get("deleted", 0))

    def txn(self, compare: list[Compare], success: list[dict], failure: list[dict] | None = None) -> bool:
        out = self._call("kv/txn", {"compare": [c.wire() for c in compare], "success": success,
                                    "failure": failure or []})
        return bool(out.get("succeeded", False))

    # -- leases ---------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return int(self._call("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its new TTL, 0 when it has already expired."""
        out = self._call("lease/keepalive", {"ID": str(lease)})
        return int(out.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self._call("lease/revoke", {"ID": str(lease)})
        except UpstreamError as exc:
            if exc.status != 404:  # already gone
                raise

    # -- watch ----------------------------------------------------------------------
    def wait_for_change(self, key: str, after_revision: int, timeout: float, *, prefix: bool = True) -> bool:
        """Block until a key under ``key`` changes after ``after_revision`` or ``timeout`` passes.

        One streaming ``/v3/watch`` call; returns True when an event arrived, False on timeout
        or when etcd cannot be reached (the caller's loop looks again either way).
        """
        body = {"create_request": {"key": _b64(key), "start_revision": str(after_revision + 1)}}
        if prefix:
            body["create_request"]["range_end"] = _b64(prefix_end(key))
        for endpoint in self.endpoints:
            try:
                with self.session.post(f"{endpoint}/v3/watch", data=json.dumps(body), stream=True,
                                       timeout=(min(self.timeout, 3.0), timeout)) as resp:
                    if resp.status_code != 200:
                        continue
                    for line in resp.iter_lines():
                        if line and json.loads(line).get("result", {}).get("events"):
                            return True
            except (requests.RequestException, ValueError):
                continue
        return False
