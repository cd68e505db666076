"""A cluster under a state directory: the driver that starts the components in order, waits for
each to be ready, records every process in ``state.json`` and stops them in reverse order.

``up``: PKI and tokens, then etcd (``etcd.py``), the API server and the controllers
(``kube.py``), kwok and its fake nodes (``kwok.py``), the game-server CRD, a ChartMuseum
(``chartmuseum.py``); ``--node`` adds the real node (``node.py``), ``start_okg`` OpenKruiseGame
and Kruise (``okg.py``). ``down`` removes OKG's webhooks and the node's pods, containers,
mounts first, then stops every recorded process (TERM, then KILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import etcd, kube, kwok
from .base import (
    CRD_FILE,
    DEFAULT_REGISTRY,
    DEFAULT_STATE_DIR,
    ClusterStartError,
    _http_get,
    _log,
    _pause,
    _pid_alive,
    _Proc,
    free_port,
    reap,
    tail,
)
from .cache import Toolchain, _node, _okg, build
from .chartmuseum import start_chartmuseum
from .kube import KUBE_VERSION

STATE_ENTRIES = ("pki", "logs", "etcd", "apiserver-certs", "chartmuseum", "kubeconfig", "env", "node",
                 "controller-manager.kubeconfig", "scheduler.kubeconfig", "kwok.kubeconfig", "state.json")


class Cluster:
    """A running (or starting) cluster under a state directory."""

    def __init__(self, state_dir: Path | str | None = None, toolchain: Toolchain | None = None):
        self.state_dir = Path(state_dir or os.environ.get("SLIPWAY_STATE_DIR") or DEFAULT_STATE_DIR)
        self.tc = toolchain or Toolchain()
        self.pki = self.state_dir / "pki"
        self.logs = self.state_dir / "logs"
        self.state_file = self.state_dir / "state.json"
        self.procs: list[_Proc] = []
        self.info: dict = {}

    # -- state ----------------------------------------------------------
    def load(self) -> dict | None:
        if not self.state_file.exists():
            return None
        try:
            return json.loads(self.state_file.read_text())
        except ValueError:
            return None

    def is_running(self, state: dict | None = None) -> bool:
        state = state or self.load()
        if not state:
            return False
        if not all(_pid_alive(p["pid"], p.get("starttime")) for p in state.get("processes", [])):
            return False
        try:
            code, _ = _http_get(state["server"] + "/readyz", state["admin_token"], state["ca_file"])
        except (OSError, ValueError):
            return False
        return code == 200

    # -- helpers --------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> _Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")
        fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        fh.flush()
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=self.state_dir, start_new_session=True,
                                 env={**os.environ, **env} if env else None)
        fh.close()
        proc = _Proc(name, popen, log, argv[0])
        self.procs.append(proc)
        self._write_state(partial=True)
        return proc

    def _wait(self, what: str, check, proc: _Proc | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                ok = check()
                last = None if ok else last
            except Exception as exc:  # connection refused while starting, etc.
                ok, last = False, exc
            if ok:
                return
            if proc is not None and proc.popen.poll() is not None:
                raise ClusterStartError(
                    f"{proc.name} exited with code {proc.popen.returncode} while waiting for {what}\n"
                    f"--- {proc.log} (tail) ---\n{tail(proc.log)}")
            if time.monotonic() > deadline:
                log_part = f"\n--- {proc.log} (tail) ---\n{tail(proc.log)}" if proc else ""
                raise ClusterStartError(f"timed out after {timeout:.0f}s waiting for {what}"
                                        f" (last error: {last}){log_part}")
            _pause(0.25)  # poll interval of a condition wait with a deadline

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=self.pki)
        if proc.returncode != 0:
            raise ClusterStartError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    def _make_pki(self) -> dict:
        self.pki.mkdir(parents=True, exist_ok=True)
        o = self._openssl
        o("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
          "-days", "3650", "-subj", "/CN=slipway-test-ca")
        (self.pki / "apiserver.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
          "-subj", "/CN=kube-apiserver")
        o("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
          "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext")
        # the API server's client certificate towards the kubelet (logs, exec)
        o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver-kubelet-client.key",
          "-out", "apiserver-kubelet-client.csr", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        (self.pki / "client.ext").write_text("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        o("x509", "-req", "-in", "apiserver-kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
          "-CAcreateserial", "-out", "apiserver-kubelet-client.crt", "-days", "3650", "-extfile", "client.ext")
        o("genrsa", "-out", "sa.key", "2048")
        o("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        tokens = {u: secrets.token_hex(16) for u in ("admin", "controller-manager", "scheduler", "kwok", "kubelet")}
        (self.pki / "tokens.csv").write_text(
            f'{tokens["admin"]},admin,uid-admin,"system:masters"\n'
            f'{tokens["controller-manager"]},system:kube-controller-manager,uid-kcm\n'
            f'{tokens["scheduler"]},system:kube-scheduler,uid-sched\n'
            f'{tokens["kwok"]},kwok-controller,uid-kwok,"system:masters"\n'
            f'{tokens["kubelet"]},system:node:slipway-node,uid-kubelet,"system:nodes"\n')
        os.chmod(self.pki / "tokens.csv", 0o600)
        (self.pki / "tokens.json").write_text(json.dumps(tokens))
        os.chmod(self.pki / "tokens.json", 0o600)
        return tokens

    def tokens(self) -> dict:
        return json.loads((self.pki / "tokens.json").read_text())

    def _kubeconfig(self, path: Path, server: str, user: str, token: str) -> None:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: slipway\n  cluster:\n"
            f"    server: {server}\n    certificate-authority: {self.pki / 'ca.crt'}\n"
            f"users:\n- name: {user}\n  user:\n    token: {token}\n"
            f"contexts:\n- name: slipway\n  context:\n    cluster: slipway\n    user: {user}\n"
            "    namespace: default\n"
            "current-context: slipway\n")
        os.chmod(path, 0o600)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = os.environ.copy()
        env["KUBECONFIG"] = str(self.state_dir / "kubeconfig")
        proc = subprocess.run([self.tc.bin("kubectl"), *args], input=input, capture_output=True, text=True,
                              env=env, timeout=120)
        if check and proc.returncode != 0:
            raise ClusterStartError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def wait_crds(self, names: list[str], timeout: float = 60.0) -> None:
        """Wait until the CRDs are Established (`kubectl wait` fails while a just-created
        CRD has no status.conditions yet)."""
        def established(name: str) -> bool:
            crd = self._api_json(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status") or {}).get("conditions") or [])
        for name in names:
            self._wait(f"CRD {name} Established", lambda n=name: established(n), None, timeout)

    def _api_json(self, path: str):
        code, body = _http_get(self.info["server"] + path, self.info["admin_token"], self.info["ca_file"])
        if code != 200:
            return None
        return json.loads(body)

    def _write_state(self, partial: bool = False) -> None:
        state = dict(self.info)
        # processes of a loaded state (a running cluster this object did not start) + ours
        ours = [p.as_dict() for p in self.procs]
        known = {p["pid"] for p in ours}
        state["processes"] = [p for p in self.info.get("processes", []) if p["pid"] not in known] + ours
        state["partial"] = partial
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    # -- lifecycle ------------------------------------------------------
    def up(self, nodes: int = 3, timeout: float = 180.0, node: bool = False) -> dict:
        state = self.load()
        if state and not state.get("partial") and self.is_running(state):
            _log(f"cluster already running under {self.state_dir}")
            self.info = state
            self.procs = []
            if node and not state.get("node"):
                self.start_node(timeout=timeout)
            return self.info
        if state:
            _log(f"cleaning up a stale cluster under {self.state_dir}")
            self.down(quiet=True)
        missing = self.tc.missing()
        if missing:
            _log(f"toolchain binaries missing ({', '.join(missing)}); building (a cold build takes long)")
            build(self.tc)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for leftover in STATE_ENTRIES:  # only what a previous `up` created
            p = self.state_dir / leftover
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        try:
            self._start(nodes, timeout)
            if node:
                self._start_node(timeout)
        except BaseException:
            self.down(quiet=True, keep_logs=True)
            raise
        self._write_state(partial=False)
        self.write_env_file()
        return self.info

    def _start(self, nodes: int, timeout: float) -> None:
        tc = self.tc
        tokens = self._make_pki()
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "controller_manager",
                                          "scheduler", "kwok", "chartmuseum")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self.info = {
            "state_dir": str(self.state_dir), "server": server, "ports": ports,
            "kubeconfig": str(self.state_dir / "kubeconfig"), "ca_file": str(self.pki / "ca.crt"),
            "admin_token": tokens["admin"], "bindir": str(tc.bindir),
            "kube_version": f"v{KUBE_VERSION}",
        }
        self._write_state(partial=True)
        etcd_url = etcd.start(self, ports, timeout)
        kube.start_apiserver(self, etcd_url, server, ports, tokens, timeout)
        kcm, sched = kube.start_controllers(self, ports)
        kwok_proc = kwok.start(self, ports)
        kube.wait_controllers(self, ports, kcm, sched, timeout)
        kwok.wait_ready(self, ports, kwok_proc, timeout)
        kwok.add_nodes(self, nodes, kwok_proc, timeout)
        kube.wait_default_serviceaccount(self, kcm, timeout)

        # CRDs every test expects
        if CRD_FILE.exists():
            self.kubectl("apply", "-f", str(CRD_FILE))
            self.wait_crds(["gameserversets.game.kruise.io"], timeout)

        # ChartMuseum (shared one; tests get their own via the fixture)
        cm = start_chartmuseum(tc, self.state_dir / "chartmuseum", ports["chartmuseum"], self._spawn)
        self.info["chartmuseum_url"] = cm["url"]

    def _start_node(self, timeout: float) -> None:
        registry = os.environ.get("SLIPWAY_REGISTRY_ADDR") or DEFAULT_REGISTRY
        _node().start(self, registry, timeout)

    def start_node(self, timeout: float = 180.0) -> dict:
        """Add the real node (containerd + kubelet, toolchain/slipway_toolchain/node.py) to a running cluster."""
        self.info = self.info or self.load() or {}
        if self.info.get("node"):
            return self.info["node"]
        missing = self.tc.missing()
        if missing:
            build(self.tc)
        try:
            self._start_node(timeout)
        except BaseException:
            _node().teardown(self, self._state_dict())
            self.info.pop("node", None)
            self._write_state(partial=False)
            raise
        self._write_state(partial=False)
        return self.info["node"]

    def stop_node(self) -> None:
        """Remove the real node again (what `start_node` made), leaving the control plane up."""
        state = self._state_dict()
        if not state.get("node"):
            return
        _node().teardown(self, state)
        node_procs = ("containerd", "kubelet")
        self.info = dict(state)
        self.info.pop("node", None)
        self.info["processes"] = [p for p in state.get("processes", []) if p["name"] not in node_procs]
        self.procs = [p for p in self.procs if p.name not in node_procs]
        self._write_state(partial=False)

    def start_okg(self, timeout: float = 180.0) -> dict:
        """Add OpenKruiseGame + Kruise (toolchain/slipway_toolchain/okg.py) to a running cluster."""
        self.info = self.info or self.load() or {}
        if self.info.get("okg"):
            return self.info["okg"]
        try:
            return _okg().start(self, timeout)
        except BaseException:
            self.stop_okg()
            raise

    def stop_okg(self) -> None:
        state = self._state_dict()
        if not state.get("okg"):
            return
        _okg().stop(self, state)
        names = ("kruise-manager", "kruise-game-manager")
        self.info = dict(state)
        self.info.pop("okg", None)
        self.info["processes"] = [p for p in state.get("processes", []) if p["name"] not in names]
        self.procs = [p for p in self.procs if p.name not in names]
        self._write_state(partial=False)

    def _state_dict(self) -> dict:
        state = self.load() or dict(self.info)
        known = {p["pid"] for p in state.get("processes", [])}
        state["processes"] = state.get("processes", []) + [
            p.as_dict() for p in self.procs if p.popen.pid not in known]
        state.setdefault("node", self.info.get("node"))
        state.setdefault("okg", self.info.get("okg"))
        return state

    def write_env_file(self) -> None:
        (self.state_dir / "env").write_text(self.env_lines() + "\n")

    def env_lines(self, state: dict | None = None) -> str:
        state = state or self.info or self.load() or {}
        lines = [
            f"export KUBECONFIG={state['kubeconfig']}",
            f"export SLIPWAY_KUBECONFIG={state['kubeconfig']}",
            f"export PATH={state['bindir']}:$PATH",
        ]
        if state.get("chartmuseum_url"):
            lines.append(f"export SLIPWAY_CHARTMUSEUM_URL={state['chartmuseum_url']}")
        return "\n".join(lines)

    def down(self, quiet: bool = False, keep_logs: bool = True, timeout: float = 20.0) -> None:
        state = self._state_dict()
        if state.get("okg"):
            _okg().stop(self, state)
        if state.get("node"):
            _node().teardown(self, state)
            if not quiet:
                _log("removed the node's containers, sandboxes, mounts, cgroups and bridge")
        entries = [p for p in state.get("processes", [])]
        known = {e["pid"] for e in entries}
        entries += [p.as_dict() for p in self.procs if p.popen.pid not in known]
        # stop in reverse start order
        for entry in reversed(entries):
            pid, exe = entry["pid"], entry.get("starttime")
            if not _pid_alive(pid, exe):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid, exe) and time.monotonic() < deadline:
                self._reap(pid)
                _pause(0.05)
            if _pid_alive(pid, exe):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap(pid)
            if not quiet:
                _log(f"stopped {entry['name']} (pid {pid})")
        self.procs = []
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if not keep_logs and self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @staticmethod
    def _reap(pid: int) -> None:
        reap(pid)
