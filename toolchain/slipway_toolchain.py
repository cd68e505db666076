"""Build, start and stop Slipway's local Kubernetes test toolchain.

Used by ``scripts/toolchain`` (command line) and by ``tests/fixtures/cluster.py``
(pytest fixtures).  Everything is built from Go modules with the Go toolchain
into a cache directory keyed by versions, and started on 127.0.0.1 with
free-picked ports under a state directory.

Only the Python standard library is used here so that the script runs before
any project dependency is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CRD_FILE = REPO / "charts" / "game-server" / "crds" / "gameserverset.yaml"

# Versions.  Kubernetes is pinned to a patch release whose every published
# staging module (k8s.io/* v0.32.N) the module proxy serves.
KUBE_VERSION = "1.32.5"
ETCD_VERSION = "3.5.21"
KWOK_VERSION = "0.8.0"
HELM_VERSION = "3.20.2"
CHARTMUSEUM_VERSION = "0.16.5"
HELMSMAN_VERSION = "4.0.5"
# Bump when the way binaries are built changes, so stale caches are not reused.
RECIPE = "1"

DEFAULT_CACHE_ROOT = "/var/cache/slipway/toolchain"
DEFAULT_STATE_DIR = "/tmp/slipway-cluster"
DEFAULT_REGISTRY = "127.0.0.1:5000"  # scripts/services' docker-registry

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = KUBE_BINARIES + ("etcd", "kwok", "helm", "chartmuseum", "helmsman",
                                "kubelet", "pause")  # the last two: toolchain/node.py

KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def _pause(seconds: float) -> None:
    """Poll interval inside condition waits that all have deadlines."""
    threading.Event().wait(seconds)


class ToolchainError(RuntimeError):
    pass


class ClusterStartError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[toolchain] {msg}", file=sys.stderr, flush=True)


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data[-lines:])


# --------------------------------------------------------------------------
# Cache layout and building
# --------------------------------------------------------------------------

def versions_key() -> str:
    return (
        f"k8s-{KUBE_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"
        f"_chartmuseum-{CHARTMUSEUM_VERSION}_helmsman-{HELMSMAN_VERSION}_r{RECIPE}"
    )


def cache_root() -> Path:
    return Path(os.environ.get("SLIPWAY_TOOLCHAIN_DIR") or DEFAULT_CACHE_ROOT)


class Toolchain:
    """Where the built binaries live."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / versions_key()
        self.bindir = self.root / "bin"
        self.logdir = self.root / "logs"
        self.srcdir = self.root / "src"

    def bin(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise ToolchainError(f"{name} is not built (expected {path}); run scripts/toolchain build")
        return str(path)

    def missing(self) -> list[str]:
        return [b for b in ALL_BINARIES if not (self.bindir / b).exists()] + (
            [] if (self.root / "kwok-stages.yaml").exists() else ["kwok-stages.yaml"]
        )

    @property
    def kwok_stages(self) -> Path:
        return self.root / "kwok-stages.yaml"

    def substitutes(self) -> dict[str, str]:
        """Binaries installed as stand-ins because the real one could not be built."""
        p = self.root / "substitutes.json"
        if p.exists():
            return json.loads(p.read_text())
        return {}


def go_binary() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise ToolchainError("the go command was not found (expected /usr/local/go/bin/go)")
    return go


def _go_env() -> dict:
    env = os.environ.copy()
    env.setdefault("GOFLAGS", "")
    return env


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, cwd=cwd, env=env or _go_env(), stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        raise ToolchainError(f"command failed (rc={rc}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail(log)}")


def _go_mod_download(module: str, log: Path) -> dict:
    cmd = [go_binary(), "mod", "download", "-json", module]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_go_env())
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        raise ToolchainError(f"go mod download {module} failed: {proc.stderr.strip()}")
    if info.get("Error"):
        raise ToolchainError(f"go mod download {module} failed: {info['Error']}")
    return info


def kube_wrapper_gomod(kube_gomod_text: str, kube_version: str = KUBE_VERSION) -> str:
    """go.mod for a module that builds k8s.io/kubernetes binaries.

    k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
    with ./staging/... paths; replaces of a dependency are ignored, so this
    wrapper replaces each of them with the published v0.MINOR.PATCH release.
    """
    staging_version = "v0." + kube_version.split(".", 1)[1]
    staging: list[str] = []
    godebug: list[str] = []
    for line in kube_gomod_text.splitlines():
        s = line.strip()
        if s.startswith("godebug "):
            godebug.append(s)
            continue
        if "=>" in s:
            continue
        m = re.match(r"^(?:require\s+)?(k8s\.io/[A-Za-z0-9._/-]+)\s+v0\.0\.0(?:\s|$)", s)
        if m and m.group(1) not in staging:
            staging.append(m.group(1))
    if not staging:
        raise ToolchainError("no k8s.io/* v0.0.0 requirements found in k8s.io/kubernetes go.mod")
    out = [
        "// Generated by toolchain/slipway_toolchain.py; do not edit.",
        "module slipway.local/toolchain/kube",
        "",
        "go 1.23.0",
        "",
        *godebug,
        "",
        f"require k8s.io/kubernetes v{kube_version}",
        "",
        "replace (",
        *[f"\t{m} => {m} {staging_version}" for m in staging],
        ")",
        "",
    ]
    return "\n".join(out)


def _version_ldflags(pkgs: list[str], git_version: str) -> str:
    major, minor = git_version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for p in pkgs:
        flags += [
            f"-X {p}.gitVersion={git_version}",
            f"-X {p}.gitMajor={major}",
            f"-X {p}.gitMinor={minor}",
            f"-X {p}.gitTreeState=clean",
            f"-X {p}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _install_atomically(built: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def _build_kube(tc: Toolchain, binaries: tuple[str, ...] = KUBE_BINARIES) -> None:
    log = tc.logdir / "build-kube.log"
    info = _go_mod_download(f"k8s.io/kubernetes@v{KUBE_VERSION}", log)
    work = tc.srcdir / "kube"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(kube_wrapper_gomod(Path(info["GoMod"]).read_text()))
    out = work / "out"
    out.mkdir(exist_ok=True)
    ld = _version_ldflags(["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"], f"v{KUBE_VERSION}")
    env = _go_env()
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    _run_logged(
        [go_binary(), "build", "-trimpath", f"-ldflags={ld}", "-o", str(out) + "/"]
        + [f"k8s.io/kubernetes/cmd/{b}" for b in binaries],
        log, cwd=work, env=env,
    )
    for b in binaries:
        _install_atomically(out / b, tc.bindir / b)


def _build_etcd(tc: Toolchain) -> None:
    log = tc.logdir / "build-etcd.log"
    work = tc.srcdir / "etcd"
    work.mkdir(parents=True, exist_ok=True)
    tmpl = (HERE / "etcd" / "go.mod").read_text()
    tmpl = re.sub(r"(go\.etcd\.io/etcd/server/v3) v[0-9.]+", rf"\1 v{ETCD_VERSION}", tmpl)
    (work / "go.mod").write_text(tmpl)
    env = _go_env()
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    out = work / "out"
    out.mkdir(exist_ok=True)
    _run_logged([go_binary(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"),
                 "go.etcd.io/etcd/server/v3"], log, cwd=work, env=env)
    _install_atomically(out / "etcd", tc.bindir / "etcd")


def _go_install(tc: Toolchain, name: str, pkg_at_version: str, ldflags: str = "-s -w") -> None:
    log = tc.logdir / f"build-{name}.log"
    gobin = tc.srcdir / f"gobin-{name}"
    gobin.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    env["GOBIN"] = str(gobin)
    _run_logged([go_binary(), "install", "-trimpath", f"-ldflags={ldflags}", pkg_at_version], log, env=env)
    built = gobin / pkg_at_version.split("@")[0].rsplit("/", 1)[-1]
    _install_atomically(built, tc.bindir / name)


def _build_kwok(tc: Toolchain) -> None:
    _go_install(tc, "kwok", f"sigs.k8s.io/kwok/cmd/kwok@v{KWOK_VERSION}",
                f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v{KWOK_VERSION}")


def _build_kwok_stages(tc: Toolchain) -> None:
    log = tc.logdir / "build-kwok.log"
    tc.logdir.mkdir(parents=True, exist_ok=True)
    info = _go_mod_download(f"sigs.k8s.io/kwok@v{KWOK_VERSION}", log)
    docs = []
    for rel in KWOK_STAGES:
        text = (Path(info["Dir"]) / rel).read_text().strip()
        docs.append(f"# from sigs.k8s.io/kwok@v{KWOK_VERSION}/{rel}\n{text}\n")
    tmp = tc.kwok_stages.with_suffix(".tmp")
    tmp.write_text("---\n".join(docs))
    os.replace(tmp, tc.kwok_stages)


def _build_helm(tc: Toolchain) -> None:
    ld = " ".join([
        "-s -w",
        f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={KUBE_VERSION.split('.')[1]}",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={KUBE_VERSION.split('.')[1]}",
    ])
    _go_install(tc, "helm", f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}", ld)


def _record_substitute(tc: Toolchain, name: str, why: str) -> None:
    p = tc.root / "substitutes.json"
    subs = tc.substitutes()
    subs[name] = why
    p.write_text(json.dumps(subs, indent=2))


def _install_script_substitute(tc: Toolchain, name: str, script: Path) -> None:
    """Install a stand-in: a copy of ``script`` inside the cache (so the cache never points
    into one particular checkout) and a wrapper under the binary's name."""
    tc.bindir.mkdir(parents=True, exist_ok=True)
    libdir = tc.root / "lib"
    libdir.mkdir(parents=True, exist_ok=True)
    copy = libdir / script.name
    shutil.copyfile(script, copy)
    dest = tc.bindir / name
    tmp = dest.with_name(name + ".tmp")
    tmp.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{copy}" "$@"\n')
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def _refresh_substitutes(tc: Toolchain) -> None:
    """Re-copy the stand-ins from this checkout on every build: cheap, and a fix to a
    stand-in reaches a warm cache without bumping the recipe."""
    for name in tc.substitutes():
        script = HERE / f"{name}_compat.py"
        if script.exists() and tc.bindir.exists():
            _install_script_substitute(tc, name, script)


def _build_chartmuseum(tc: Toolchain) -> None:
    try:
        _go_install(tc, "chartmuseum", f"helm.sh/chartmuseum/cmd/chartmuseum@v{CHARTMUSEUM_VERSION}",
                    f"-s -w -X main.Version=v{CHARTMUSEUM_VERSION}")
    except ToolchainError as exc:
        if "403" not in str(exc) and "not available" not in str(exc):
            raise
        why = (f"helm.sh/chartmuseum@v{CHARTMUSEUM_VERSION} is refused by the module proxy "
               f"(403); installed toolchain/chartmuseum_compat.py (ChartMuseum HTTP API subset)")
        _log("WARNING: " + why)
        _install_script_substitute(tc, "chartmuseum", HERE / "chartmuseum_compat.py")
        _record_substitute(tc, "chartmuseum", why)


def helmsman_module_query() -> list[str]:
    """Module queries tried for helmsman v4.0.5 (its tags lack the /v4 suffix)."""
    return [
        f"github.com/mkubaczyk/helmsman@v{HELMSMAN_VERSION}",
        f"github.com/mkubaczyk/helmsman@v{HELMSMAN_VERSION}+incompatible",
    ]


def _build_helmsman(tc: Toolchain) -> None:
    log = tc.logdir / "build-helmsman.log"
    tc.logdir.mkdir(parents=True, exist_ok=True)
    errors = []
    for query in helmsman_module_query():
        try:
            info = _go_mod_download(query, log)
        except ToolchainError as exc:
            errors.append(str(exc))
            continue
        version = info["Version"]
        _go_install(tc, "helmsman", f"github.com/mkubaczyk/helmsman/cmd/helmsman@{version}",
                    f"-s -w -X main.version=v{HELMSMAN_VERSION}")
        return
    why = ("github.com/mkubaczyk/helmsman is refused by the module proxy (403): "
           + " | ".join(e.splitlines()[0] for e in errors)
           + "; installed toolchain/helmsman_compat.py (helmsman DSS subset driving the real helm)")
    if not (HERE / "helmsman_compat.py").exists():
        raise ToolchainError(why)
    _log("WARNING: " + why)
    _install_script_substitute(tc, "helmsman", HERE / "helmsman_compat.py")
    _record_substitute(tc, "helmsman", why)


BUILDERS = [
    (("etcd",), _build_etcd),
    (KUBE_BINARIES, _build_kube),
    (("kwok",), _build_kwok),
    (("kwok-stages.yaml",), _build_kwok_stages),
    (("helm",), _build_helm),
    (("chartmuseum",), _build_chartmuseum),
    (("helmsman",), _build_helmsman),
]


def _node():
    """toolchain/node.py (the real node), imported on first use: it builds on this module."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import node

    return node


def _okg():
    """toolchain/okg.py (OpenKruiseGame + Kruise), imported on first use."""
    _node()
    import okg

    return okg


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(tc: Toolchain | None = None) -> Toolchain:
    """Build every missing binary into the cache. Idempotent."""
    tc = tc or Toolchain()
    _refresh_substitutes(tc)
    if not tc.missing():
        return tc
    with _lock(tc.root.parent / f"{tc.root.name}.lock"):
        for d in (tc.bindir, tc.logdir, tc.srcdir):
            d.mkdir(parents=True, exist_ok=True)
        for names, fn in BUILDERS + _node().BUILDERS:
            have = [n for n in names if (tc.bindir / n).exists() or (tc.root / n).exists()]
            if len(have) == len(names):
                continue
            started = time.monotonic()
            _log(f"building {', '.join(names)} (log: {tc.logdir})")
            fn(tc)
            _log(f"built {', '.join(names)} in {time.monotonic() - started:.0f}s")
    return tc


# --------------------------------------------------------------------------
# Running the cluster
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_starttime(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot): guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _pid_alive(pid: int, starttime: str | None = None) -> bool:
    current = _proc_starttime(pid)
    if current is None:
        return False
    return starttime is None or current == starttime


def _http_get(url: str, token: str | None = None, cafile: str | None = None, timeout: float = 3.0):
    if url.startswith("https"):
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
        else:
            ctx = ssl._create_unverified_context()  # self-signed component health ports
    else:
        ctx = None
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class _Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path, exe: str):
        self.name, self.popen, self.log, self.exe = name, popen, log, exe
        self.starttime = _proc_starttime(popen.pid)

    def as_dict(self) -> dict:
        return {"name": self.name, "pid": self.popen.pid, "log": str(self.log), "exe": self.exe,
                "starttime": self.starttime}


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

        # etcd
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        etcd = self._spawn("etcd", [
            tc.bin("etcd"), "--name=slipway", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=slipway={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ])
        self._wait("etcd /health",
                   lambda: json.loads(_http_get(etcd_url + "/health")[1]).get("health") == "true",
                   etcd, timeout)

        # kube-apiserver
        pki = self.pki
        api = self._spawn("kube-apiserver", [
            tc.bin("kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--anonymous-auth=true",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24", "--allow-privileged=true",
            "--profiling=false", "--endpoint-reconciler-type=none", "--v=1",
        ])
        tok, ca = tokens["admin"], str(pki / "ca.crt")
        self._wait("kube-apiserver /readyz", lambda: _http_get(server + "/readyz", tok, ca)[0] == 200, api, timeout)
        self._wait("kube-apiserver /livez", lambda: _http_get(server + "/livez", tok, ca)[0] == 200, api, timeout)

        self._kubeconfig(self.state_dir / "kubeconfig", server, "admin", tokens["admin"])
        for name in ("controller-manager", "scheduler", "kwok"):
            self._kubeconfig(self.state_dir / f"{name}.kubeconfig", server, name, tokens[name])

        kcm = self._spawn("kube-controller-manager", [
            tc.bin("kube-controller-manager"), f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--controllers=*", "--v=1",
        ])
        sched = self._spawn("kube-scheduler", [
            tc.bin("kube-scheduler"), f"--kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", "--leader-elect=false", "--v=1",
        ])
        kwok = self._spawn("kwok", [
            tc.bin("kwok"), f"--kubeconfig={self.state_dir / 'kwok.kubeconfig'}",
            f"--config={tc.kwok_stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION[0]}={FAKE_NODE_ANNOTATION[1]}",
            "--node-lease-duration-seconds=40", "--cidr=10.244.0.1/16", "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ])
        cm_url = f"https://127.0.0.1:{ports['controller_manager']}/healthz"
        self._wait("kube-controller-manager /healthz", lambda: _http_get(cm_url)[0] == 200, kcm, timeout)
        sc_url = f"https://127.0.0.1:{ports['scheduler']}/healthz"
        self._wait("kube-scheduler /healthz", lambda: _http_get(sc_url)[0] == 200, sched, timeout)
        kw_url = f"http://127.0.0.1:{ports['kwok']}/healthz"
        self._wait("kwok /healthz", lambda: _http_get(kw_url)[0] == 200, kwok, timeout)

        # fake nodes
        self.kubectl("apply", "-f", "-", input=fake_nodes_yaml(nodes))

        def nodes_ready() -> bool:
            items = (self._api_json("/api/v1/nodes") or {}).get("items", [])
            ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in n.get("status", {}).get("conditions", []))]
            return len(ready) >= nodes
        self._wait(f"{nodes} fake nodes Ready", nodes_ready, kwok, timeout)
        self._wait("default ServiceAccount in namespace default",
                   lambda: self._api_json("/api/v1/namespaces/default/serviceaccounts/default") is not None,
                   kcm, timeout)

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
        """Add the real node (containerd + kubelet, toolchain/node.py) to a running cluster."""
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
        """Add OpenKruiseGame + Kruise (toolchain/okg.py) to a running cluster."""
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
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def fake_nodes_yaml(count: int) -> str:
    docs = []
    for i in range(count):
        name = f"kwok-node-{i}"
        docs.append(f"""apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    {FAKE_NODE_ANNOTATION[0]}: {FAKE_NODE_ANNOTATION[1]}
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
""")
    return "---\n".join(docs)


def start_chartmuseum(tc: Toolchain, storage_dir: Path, port: int, spawn=None, timeout: float = 60.0) -> dict:
    """Start ChartMuseum with local storage; returns {url, storage_dir, pid, log, popen}.

    ``spawn(name, argv)`` (Cluster._spawn) records the process for `down`; without
    it the process is started here and the caller must stop it.
    """
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    argv = [tc.bin("chartmuseum"), f"--port={port}", "--listen-host=127.0.0.1", "--storage=local",
            f"--storage-local-rootdir={storage_dir}", "--disable-statefiles"]
    if spawn is not None:
        proc = spawn("chartmuseum", argv)
        popen, log = proc.popen, proc.log
    else:
        log = storage_dir.parent / f"chartmuseum-{port}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _http_get(url + "/health")[0] == 200:
                break
        except OSError:
            pass
        if popen.poll() is not None:
            raise ClusterStartError(f"chartmuseum exited with code {popen.returncode}\n"
                                    f"--- {log} (tail) ---\n{tail(log)}")
        if time.monotonic() > deadline:
            popen.kill()
            raise ClusterStartError(f"timed out waiting for chartmuseum /health\n--- {log} ---\n{tail(log)}")
        _pause(0.1)  # poll interval of a condition wait with a deadline
    return {"url": url, "storage_dir": str(storage_dir), "pid": popen.pid, "log": str(log), "popen": popen}


# --------------------------------------------------------------------------
# BuildKit: buildkitd + buildctl, a cache entry of their own
# --------------------------------------------------------------------------
# Kept apart from versions_key() so that adding or bumping BuildKit never forces a
# rebuild of the Kubernetes toolchain (and the other way round).

BUILDKIT_VERSION = "0.34.2"
BUILDKIT_RECIPE = "1"
BUILDKIT_BINARIES = ("buildkitd", "buildctl")
DEFAULT_BUILDKIT_STATE_DIR = "/tmp/slipway-buildkit"


def buildkit_key() -> str:
    return f"buildkit-{BUILDKIT_VERSION}_r{BUILDKIT_RECIPE}"


class BuildKitToolchain(Toolchain):
    def __init__(self, root: Path | None = None):
        super().__init__(Path(root) if root else cache_root() / buildkit_key())

    def missing(self) -> list[str]:
        return [b for b in BUILDKIT_BINARIES if not (self.bindir / b).exists()]


def buildkit_wrapper_gomod(buildkit_gomod_text: str) -> str:
    """go.mod of a module that builds buildkitd and buildctl.

    github.com/moby/buildkit's go.mod carries exclude directives, so `go install
    pkg@version` refuses it; as a dependency of a main module with the same requirements
    and excludes (and no replace directives) it builds with exactly its own versions.
    """
    text = re.sub(r"^module\s+\S+", "module slipway.local/toolchain/buildkit", buildkit_gomod_text,
                  count=1, flags=re.MULTILINE)
    if "replace " in text or "replace(" in text:
        raise ToolchainError("github.com/moby/buildkit's go.mod has replace directives; the recipe "
                             "expects none")
    return ("// Generated by toolchain/slipway_toolchain.py; do not edit.\n" + text
            + f"\nrequire github.com/moby/buildkit v{BUILDKIT_VERSION}\n")


def _build_buildkit(tc: BuildKitToolchain) -> None:
    log = tc.logdir / "build-buildkit.log"
    info = _go_mod_download(f"github.com/moby/buildkit@v{BUILDKIT_VERSION}", log)
    work = tc.srcdir / "buildkit"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(buildkit_wrapper_gomod(Path(info["GoMod"]).read_text()))
    out = work / "out"
    out.mkdir(exist_ok=True)
    env = _go_env()
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    env["CGO_ENABLED"] = "0"  # static binaries
    ld = f"-s -w -X github.com/moby/buildkit/version.Version=v{BUILDKIT_VERSION}"
    _run_logged([go_binary(), "build", "-trimpath", f"-ldflags={ld}", "-o", str(out) + "/"]
                + [f"github.com/moby/buildkit/cmd/{b}" for b in BUILDKIT_BINARIES], log, cwd=work, env=env)
    for b in BUILDKIT_BINARIES:
        _install_atomically(out / b, tc.bindir / b)


def build_buildkit(tc: BuildKitToolchain | None = None) -> BuildKitToolchain:
    """Build buildkitd and buildctl into their own cache entry when missing. Idempotent."""
    tc = tc or BuildKitToolchain()
    if not tc.missing():
        return tc
    with _lock(tc.root.parent / f"{tc.root.name}.lock"):
        if not tc.missing():
            return tc
        for d in (tc.bindir, tc.logdir, tc.srcdir):
            d.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        _log(f"building buildkitd, buildctl v{BUILDKIT_VERSION} (log: {tc.logdir})")
        _build_buildkit(tc)
        _log(f"built buildkitd, buildctl in {time.monotonic() - started:.0f}s")
    return tc


class BuildKitd:
    """One buildkitd (root, OCI worker with runc) on a unix socket under a state directory.

    ``up`` is ready only when ``buildctl debug workers`` lists a worker; ``down`` stops it
    (TERM, then KILL after a deadline). The state directory holds the socket, the daemon's
    root (its local cache), its config and log, and state.json for ``down`` from another
    process.
    """

    def __init__(self, state_dir: Path | str | None = None, toolchain: BuildKitToolchain | None = None):
        self.state_dir = Path(state_dir or os.environ.get("SLIPWAY_BUILDKIT_STATE_DIR")
                              or DEFAULT_BUILDKIT_STATE_DIR).resolve()
        self.tc = toolchain or BuildKitToolchain()
        self.socket = self.state_dir / "buildkitd.sock"
        self.address = f"unix://{self.socket}"
        self.log = self.state_dir / "buildkitd.log"
        self.state_file = self.state_dir / "state.json"
        self.popen: subprocess.Popen | None = None

    def load(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def workers(self, timeout: float = 5.0) -> str | None:
        """``buildctl debug workers`` output, or None when the daemon does not answer."""
        try:
            res = subprocess.run([self.tc.bin("buildctl"), "--addr", self.address, "--timeout",
                                  str(max(1, int(timeout))), "debug", "workers"],
                                 check=False, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return None
        if res.returncode != 0 or len(res.stdout.strip().splitlines()) < 2:
            return None
        return res.stdout

    def is_running(self, state: dict | None = None) -> bool:
        state = state or self.load()
        return bool(state and _pid_alive(state["pid"], state.get("starttime")) and self.workers())

    def argv(self) -> list[str]:
        return [self.tc.bin("buildkitd"), f"--root={self.state_dir / 'root'}", f"--addr={self.address}",
                f"--config={self.state_dir / 'buildkitd.toml'}", "--oci-worker=true",
                "--containerd-worker=false", "--oci-worker-binary=runc",
                f"--oci-worker-snapshotter={os.environ.get('SLIPWAY_BUILDKIT_SNAPSHOTTER', 'auto')}",
                "--oci-worker-net=host", f"--otel-socket-path={self.state_dir / 'otel-grpc.sock'}"]

    def up(self, timeout: float = 120.0) -> dict:
        state = self.load()
        if state and self.is_running(state):
            return state
        if state:
            self.down(quiet=True)
        if self.tc.missing():
            _log("buildkitd/buildctl missing; building them (a cold build takes several minutes)")
            build_buildkit(self.tc)
        if not shutil.which("runc"):
            raise ClusterStartError("runc is not installed (apt-get install runc; scripts/install)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        (self.state_dir / "buildkitd.toml").write_text(
            "# written by toolchain/slipway_toolchain.py\n"
            "[worker.oci]\n  gc = true\n  gckeepstorage = 10000000000\n")
        argv = self.argv()
        with open(self.log, "ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            fh.flush()
            self.popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.state_dir, start_new_session=True)
        state = {"pid": self.popen.pid, "starttime": _proc_starttime(self.popen.pid),
                 "address": self.address, "state_dir": str(self.state_dir), "log": str(self.log),
                 "bindir": str(self.tc.bindir)}
        self.state_file.write_text(json.dumps(state, indent=2))
        deadline = time.monotonic() + timeout
        while self.workers() is None:
            if self.popen.poll() is not None:
                raise ClusterStartError(f"buildkitd exited with code {self.popen.returncode}\n"
                                        f"--- {self.log} (tail) ---\n{tail(self.log)}")
            if time.monotonic() > deadline:
                self.down(quiet=True)
                raise ClusterStartError(f"buildkitd did not list a worker within {timeout:.0f}s\n"
                                        f"--- {self.log} (tail) ---\n{tail(self.log)}")
            _pause(0.1)  # poll interval of a condition wait with a deadline
        return state

    def down(self, quiet: bool = False, timeout: float = 20.0) -> None:
        state = self.load() or {}
        pid = state.get("pid") or (self.popen.pid if self.popen else None)
        start = state.get("starttime")
        if pid and _pid_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid, start) and time.monotonic() < deadline:
                Cluster._reap(pid)
                _pause(0.05)
            if _pid_alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            Cluster._reap(pid)
            if not quiet:
                _log(f"stopped buildkitd (pid {pid})")
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=1)
        if not (pid and _pid_alive(pid, start)):
            self.release_leftovers()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def release_leftovers(self) -> None:
        """What a daemon killed mid-build leaves behind: its runc containers (state in
        /run/runc, named after the bundles in its executor directory) and the mounts of their
        root filesystems and cache mounts under the state directory."""
        for bundle in sorted((self.state_dir / "root").glob("runc-*/executor/*")):
            if bundle.is_dir():
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run(["runc", "delete", "--force", bundle.name], capture_output=True,
                                   timeout=30, check=False)
        prefix = str(self.state_dir) + "/"
        try:
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        except OSError:
            return
        for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30, check=False)

    def env_lines(self) -> str:
        return (f"export BUILDKIT_HOST={self.address}\n"
                f"export PATH={self.tc.bindir}:$PATH")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

USAGE = """usage: scripts/toolchain COMMAND [--state-dir DIR]

  build   build every missing binary into the cache (idempotent): Kubernetes tools, then BuildKit
  build kube | build buildkit
          build only the Kubernetes toolchain / only buildkitd + buildctl
  buildkitd up|down|env
          start (ready when `buildctl debug workers` lists a worker) / stop / show one buildkitd
          (root, OCI worker with runc) on unix://<state-dir>/buildkitd.sock
  up      start etcd, the control plane, kwok + fake nodes and ChartMuseum (re-runnable);
          --node also starts the real node (containerd + kubelet, toolchain/node.py)
          and waits for it to be Ready; --okg (implies --node) also installs and runs
          OpenKruiseGame + Kruise (toolchain/okg.py)
  down    stop what `up` started; removes the node's pods, containers, netns, mounts
  env     print the shell export lines for a running cluster
  where   print the cache bin directory
  build-okg  build kruise-game-manager and kruise-manager into their own cache entry

Cache: $SLIPWAY_TOOLCHAIN_DIR (default /var/cache/slipway/toolchain)/<versions-key>/bin
       BuildKit: $SLIPWAY_TOOLCHAIN_DIR/buildkit-<version>_r<recipe>/bin
State: --state-dir or $SLIPWAY_STATE_DIR (default /tmp/slipway-cluster)
       buildkitd: --state-dir or $SLIPWAY_BUILDKIT_STATE_DIR (default /tmp/slipway-buildkit)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    state_dir = None
    if "--state-dir" in argv:
        i = argv.index("--state-dir")
        state_dir = argv[i + 1]
        del argv[i:i + 2]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd = argv[0]
    try:
        if cmd == "build":
            what = argv[1] if len(argv) > 1 else "all"
            if what not in ("all", "kube", "buildkit"):
                print(USAGE, file=sys.stderr)
                return 2
            started = time.monotonic()
            if what in ("all", "kube"):
                tc = build()
                print(f"toolchain ready in {tc.bindir} ({time.monotonic() - started:.0f}s)")
                for name, why in tc.substitutes().items():
                    print(f"WARNING: {name} is a substitute: {why}")
            if what in ("all", "buildkit"):
                bk = build_buildkit()
                print(f"buildkit ready in {bk.bindir} ({time.monotonic() - started:.0f}s)")
        elif cmd == "build-okg":
            started = time.monotonic()
            otc = _okg().build()
            print(f"OpenKruiseGame + Kruise ready in {otc.bindir} ({time.monotonic() - started:.0f}s)")
        elif cmd == "buildkitd":
            sub = argv[1] if len(argv) > 1 else ""
            bkd = BuildKitd(state_dir)
            if sub == "up":
                bkd.up()
                print(bkd.env_lines())
                print(f"# buildkitd log: {bkd.log}")
            elif sub == "down":
                bkd.down()
            elif sub == "env":
                if not bkd.is_running():
                    print(f"no running buildkitd under {bkd.state_dir}", file=sys.stderr)
                    return 1
                print(bkd.env_lines())
            else:
                print(USAGE, file=sys.stderr)
                return 2
        elif cmd == "where":
            print(Toolchain().bindir)
        elif cmd == "up":
            c = Cluster(state_dir)
            with_okg = "--okg" in argv[1:]
            info = c.up(node=with_okg or "--node" in argv[1:])
            if with_okg:
                c.start_okg()
            print(c.env_lines(info))
            print(f"# ChartMuseum: {info.get('chartmuseum_url')}")
            print(f"# API server: {info['server']}  logs: {c.logs}")
            if info.get("node"):
                print(f"# node {info['node']['name']} Ready; pods on {info['node']['subnet']}")
        elif cmd == "down":
            Cluster(state_dir).down()
        elif cmd == "env":
            c = Cluster(state_dir)
            state = c.load()
            if not state or not c.is_running(state):
                print(f"no running cluster under {c.state_dir}", file=sys.stderr)
                return 1
            print(c.env_lines(state))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except (ToolchainError, ClusterStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
