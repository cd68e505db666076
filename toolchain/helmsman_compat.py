#!/usr/bin/env python3
"""Stand-in for helmsman v4.0.5, used only when the real one cannot be built.

The module proxy this project reaches refuses github.com/mkubaczyk/helmsman
(403 for every version and path), so `scripts/toolchain build` installs this
script as `helmsman` in the toolchain bin directory and records that in
substitutes.json.  It reads a YAML Desired State File and drives the real helm
binary (found on PATH or beside this launcher) for the subset Slipway uses.

It is deliberately at least as strict as helmsman v4.0.5 on what Slipway's DSS
files and helmsman job got wrong before (each rule has a negative test):

* ``apps.X.version`` is required and must parse with the constraint grammar of
  Masterminds/semver v1.5.0, which helmsman validates with: AND bounds are
  separated by commas (``">=0.1.0-0, <1.0.0-0"``), OR groups by ``||``; a
  space-separated ``">=0.1.0-0 <1.0.0-0"`` is an "improper constraint".
  The newest chart version matching it is resolved by helm, as helmsman does.
* ``protected`` (app or namespace, the namespace wins) means helmsman does not
  touch an existing release: no upgrade, no delete. A release can still be
  installed into protection.
* A kube context must be resolvable: ``settings.kubeContext`` naming a context
  of the kubeconfig, or created from helmsman's in-cluster settings
  (``bearerToken: true``, ``clusterURI``, ``certificates.caCrt`` and the token
  at ``bearerTokenPath``, default the pod's service-account token); without
  ``kubeContext`` the kubeconfig's current context.  Otherwise: "settings
  validation failed -- you have not defined a kubeContext to use".
* Every app's namespace must be declared under ``namespaces``.
* ``settings`` takes only helmsman's documented keys.  helmsman itself ignores
  unknown ones silently (``settings.timeout`` never reached helm); this
  stand-in refuses them so a test catches it.  Timeouts are per app.
* ``settings.globalMaxHistory`` (overridden per app by ``maxHistory``, default
  10) is passed to helm as ``--history-max``.
* helmsman works in ``.helmsman-tmp`` under the current directory; an
  unwritable working directory fails the run.
* An existing release is upgraded only when the resolved chart version differs
  or the rendered manifest differs from the deployed one (helmsman's
  diff-based decision; rendered without cluster access, like the ``kubectl
  diff`` fallback, so ``lookup`` sees nothing).  A no-op run keeps the helm
  revision.

Flags: -f/--file (repeatable, later files override), --apply, --dry-run,
--destroy, --target, --group, --keep-untracked-releases, --debug, --verbose,
--no-banner, --kubeconfig, --subst-env-values, --no-env-subst, -v/--version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

VERSION = "v4.0.5-slipway-compat"
MANAGED_LABEL = "MANAGED-BY"
CONTEXT_LABEL = "HELMSMAN_CONTEXT"
TMP_DIR = ".helmsman-tmp"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_MAX_HISTORY = 10

TOP_LEVEL_KEYS = {"metadata", "certificates", "context", "settings", "namespaces", "helmRepos",
                  "preconfiguredHelmRepos", "appsTemplates", "apps"}
SETTINGS_KEYS = {
    "kubeContext", "username", "password", "clusterURI", "bearerToken", "bearerTokenPath",
    "storageBackend", "slackWebhook", "msTeamsWebhook", "reverseDelete",
    "namespaceLabelsAuthoritative", "vaultEnabled", "vaultDeliminator", "vaultPath",
    "vaultMountPoint", "vaultTemplate", "vaultKvVersion", "vaultEnvironment", "eyamlEnabled",
    "eyamlPrivateKeyPath", "eyamlPublicKeyPath", "globalHooks", "globalMaxHistory",
    "skipIgnoredApps", "skipPendingApps",
}
CERTIFICATE_KEYS = {"caCrt", "caKey", "caClient"}


class DsfError(Exception):
    """A desired state file helmsman would refuse."""


# -- Masterminds/semver v1 constraints ---------------------------------------------------------
# Grammar of v1.5.0 (what helmsman v4.0.5 validates `version` with): "||" separates OR groups,
# "," separates the AND constraints of a group, each constraint is OPERATOR VERSION where the
# version may be partial or use x/X/* wildcards; "A - B" is a range.
_CV = (r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?"
       r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
       r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?")
_OPS = r"~>|~|\^|>=|=>|<=|=<|!=|>|<|=|"
_ONE = re.compile(rf"^\s*({_OPS})\s*({_CV})\s*$")
_RANGE = re.compile(rf"\s*({_CV})\s+-\s+({_CV})\s*")


def _is_x(part: str) -> bool:
    return part in ("x", "X", "*")


class _Bound:
    def __init__(self, op: str, text: str):
        m = _ONE.match(f"{op}{text}")
        major, minor, patch = m.group(3), m.group(4), m.group(5)
        pre = m.group(7) or ""
        self.op = op
        self.orig = text
        self.dirty = self.minor_dirty = self.patch_dirty = False
        if _is_x(major):
            nums, self.dirty = (0, 0, 0), True
        elif not minor or _is_x(minor[1:]):
            nums, self.dirty, self.minor_dirty = (int(major), 0, 0), True, True
        elif not patch or _is_x(patch[1:]):
            nums, self.dirty, self.patch_dirty = (int(major), int(minor[1:]), 0), True, True
        else:
            nums = (int(major), int(minor[1:]), int(patch[1:]))
        self.ver = _SemVer(*nums, pre)


class _SemVer:
    def __init__(self, major: int, minor: int, patch: int, pre: str = ""):
        self.major, self.minor, self.patch, self.pre = major, minor, patch, pre

    @classmethod
    def parse(cls, text: str) -> _SemVer | None:
        m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.\-]+))?(?:\+[0-9A-Za-z.\-]+)?",
                         text.strip())
        if not m:
            return None
        return cls(int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), m.group(4) or "")

    def _pre_key(self):
        if not self.pre:
            return (1,)
        return (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre.split(".")))

    def key(self):
        return (self.major, self.minor, self.patch, self._pre_key())

    def cmp(self, other: _SemVer) -> int:
        a, b = self.key(), other.key()
        return (a > b) - (a < b)


def _check(v: _SemVer, b: _Bound) -> bool:
    """One bound, with semver's rule that a prerelease only satisfies a bound that names one."""
    if v.pre and not b.ver.pre:
        return False
    c = v.cmp(b.ver)
    op = b.op
    if op in ("", "="):
        op = "~" if b.dirty else "=="
    if op == "==":
        return c == 0
    if op == "!=":
        return c != 0
    if op in (">=", "=>"):
        return c >= 0
    if op == "<":
        return c < 0
    if op == ">":
        if not b.dirty:
            return c > 0
        if v.major != b.ver.major:
            return v.major > b.ver.major
        if b.minor_dirty:
            return False
        if b.patch_dirty:
            return v.minor > b.ver.minor
        return c > 0
    if op in ("<=", "=<"):
        if not b.dirty:
            return c <= 0
        if v.major > b.ver.major:
            return False
        return not (v.major == b.ver.major and v.minor > b.ver.minor and not b.minor_dirty)
    if op in ("~", "~>"):
        if c < 0:
            return False
        if (b.ver.major, b.ver.minor, b.ver.patch) == (0, 0, 0) and not b.minor_dirty \
                and not b.patch_dirty:
            return True
        if v.major != b.ver.major:
            return False
        return b.minor_dirty or v.minor == b.ver.minor
    if op == "^":
        if c < 0:
            return False
        if b.ver.major > 0 or b.minor_dirty:
            return v.major == b.ver.major
        if v.major > 0:
            return False
        if b.ver.minor > 0 or b.patch_dirty:
            return v.minor == b.ver.minor
        return v.minor == 0 and v.patch == b.ver.patch
    return False


def parse_constraint(text: str) -> list[list[_Bound]]:
    """Parse a semver v1 constraint; raises DsfError("improper constraint: ...") like v1.5.0."""
    text = _RANGE.sub(lambda m: f">= {m.group(1)}, <= {m.group(11)}", str(text))
    groups = []
    for part in text.split("||"):
        bounds = []
        for piece in part.split(","):
            m = _ONE.match(piece)
            if not m:
                raise DsfError(f"improper constraint: {piece.strip() or piece}")
            bounds.append(_Bound(m.group(1), m.group(2)))
        groups.append(bounds)
    return groups


def constraint_allows(constraint: str, version: str) -> bool:
    v = _SemVer.parse(version)
    if v is None:
        return False
    return any(all(_check(v, b) for b in group) for group in parse_constraint(constraint))


# -- the desired state file ---------------------------------------------------------------------
def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_dsf(files: list[str], subst_env: bool = True) -> tuple[dict, Path]:
    merged: dict = {}
    base = Path(files[0]).resolve().parent
    for f in files:
        p = Path(f)
        if p.suffix == ".toml":
            raise DsfError(f"TOML desired state files are not supported by the stand-in: {f}")
        try:
            text = p.read_text()
        except OSError as exc:
            raise DsfError(f"cannot read desired state file {f}: {exc.strerror}") from None
        if subst_env:
            used = re.findall(r"(?<!\$)\$\{(\w+)\}|(?<!\$)\$([A-Za-z_]\w*)", text)
            missing = sorted({a or b for a, b in used if (a or b) not in os.environ})
            if missing:
                raise DsfError(f"{f}: environment variable(s) not set: {', '.join(missing)}")
            text = os.path.expandvars(text)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise DsfError(f"{f} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise DsfError(f"{f}: a desired state file is a mapping")
        merged = _merge(merged, data)
    return merged, base


def _int(value, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DsfError(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise DsfError(f"{where} out of range: {value}")
    return value


def validate(dsf: dict) -> list[str]:
    """Every reason helmsman (or this stricter stand-in) refuses the file; empty when valid."""
    errors: list[str] = []

    def guard(fn):
        try:
            fn()
        except DsfError as exc:
            errors.append(str(exc))

    unknown = sorted(set(dsf) - TOP_LEVEL_KEYS)
    if unknown:
        errors.append(f"unknown top-level keys: {', '.join(unknown)}")
    settings = dsf.get("settings") or {}
    if not isinstance(settings, dict):
        errors.append("settings must be a mapping")
        settings = {}
    for key in sorted(set(settings) - SETTINGS_KEYS):
        hint = " (timeouts are per app: apps.<name>.timeout)" if key == "timeout" else ""
        errors.append(f"settings.{key} is not a helmsman setting{hint}; helmsman ignores it "
                      "silently, this stand-in refuses it")
    if "globalMaxHistory" in settings:
        guard(lambda: _int(settings["globalMaxHistory"], "settings.globalMaxHistory", minimum=0))
    certs = dsf.get("certificates") or {}
    if not isinstance(certs, dict) or set(certs) - CERTIFICATE_KEYS:
        errors.append(f"certificates takes only {', '.join(sorted(CERTIFICATE_KEYS))}")
    namespaces = dsf.get("namespaces")
    if not isinstance(namespaces, dict) or not namespaces:
        errors.append("namespaces: at least one namespace must be declared")
        namespaces = {}
    for ns, spec in namespaces.items():
        if spec is not None and not isinstance(spec, dict):
            errors.append(f"namespaces.{ns} must be a mapping")
    apps = dsf.get("apps") or {}
    if not isinstance(apps, dict):
        errors.append("apps must be a mapping")
        apps = {}
    for key, app in apps.items():
        if not isinstance(app, dict):
            errors.append(f"apps.{key} must be a mapping")
            continue
        where = f"apps.{key}"
        ns = app.get("namespace")
        if not ns:
            errors.append(f"{where}.namespace is required")
        elif ns not in namespaces:
            errors.append(f"{where}: namespace [ {ns} ] is not declared under namespaces")
        if not app.get("chart"):
            errors.append(f"{where}.chart is required")
        version = app.get("version")
        if version is None or str(version).strip() == "":
            errors.append(f"{where}.version is required (a semver constraint)")
        else:
            guard(lambda v=version: parse_constraint(str(v)))
        if "priority" in app:
            guard(lambda a=app, w=where: _int(a["priority"], f"{w}.priority", maximum=0))
        if "timeout" in app:
            guard(lambda a=app, w=where: _int(a["timeout"], f"{w}.timeout (seconds)", minimum=1))
        if "maxHistory" in app:
            guard(lambda a=app, w=where: _int(a["maxHistory"], f"{w}.maxHistory", minimum=0))
        for flag in ("enabled", "protected", "wait"):
            if flag in app and not isinstance(app[flag], bool):
                errors.append(f"{where}.{flag} must be true or false")
    return errors


# -- kube context ---------------------------------------------------------------------------------
def _kubeconfig_paths(flag: str | None) -> list[Path]:
    """The kubeconfig files in kubectl's order; a created context goes into the first."""
    if flag:
        return [Path(flag)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _load_kubeconfig(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_context(dsf: dict, kubeconfigs: list[Path]) -> str:
    """The kube context to use, created from the in-cluster settings when needed."""
    settings = dsf.get("settings") or {}
    configs = [_load_kubeconfig(p) for p in kubeconfigs]
    kubeconfig, cfg = kubeconfigs[0], configs[0]
    contexts = {c.get("name") for conf in configs for c in conf.get("contexts") or []
                if isinstance(c, dict)}
    wanted = settings.get("kubeContext")
    if not wanted:
        current = next((conf["current-context"] for conf in configs
                        if conf.get("current-context")), None)
        if current and current in contexts:
            return current
        raise DsfError("settings validation failed -- you have not defined a kubeContext to use. "
                       "Either define it in the desired state file or pass a kubeconfig with "
                       "--kubeconfig to use an existing context.")
    wanted = str(wanted)
    if wanted in contexts:
        return wanted
    if not settings.get("bearerToken"):
        if settings.get("username") or settings.get("password"):
            raise DsfError("settings: username/password connections are not supported by the "
                           "stand-in; use bearerToken")
        raise DsfError(f"kube context [ {wanted} ] does not exist in {kubeconfig} and the settings "
                       "give no way to create it (bearerToken, clusterURI, certificates.caCrt)")
    uri = str(settings.get("clusterURI") or "")
    if uri.startswith("$"):
        uri = os.environ.get(uri.lstrip("${").rstrip("}"), "")
    if not uri:
        raise DsfError(f"settings.clusterURI is required to create kube context [ {wanted} ]")
    ca = (dsf.get("certificates") or {}).get("caCrt")
    if not ca:
        raise DsfError(f"certificates.caCrt is required to create kube context [ {wanted} ]")
    if not Path(ca).is_file():
        raise DsfError(f"certificates.caCrt: {ca}: no such file")
    token = str(settings.get("bearerTokenPath") or SA_TOKEN)
    if not Path(token).is_file():
        raise DsfError(f"settings.bearerTokenPath: {token}: no such file (bearerToken: true)")
    name = f"helmsman-{wanted}"
    cfg.setdefault("apiVersion", "v1")
    cfg.setdefault("kind", "Config")
    cfg["clusters"] = [c for c in cfg.get("clusters") or [] if c.get("name") != name] + [
        {"name": name, "cluster": {"server": uri, "certificate-authority": str(Path(ca).resolve())}}]
    cfg["users"] = [u for u in cfg.get("users") or [] if u.get("name") != name] + [
        {"name": name, "user": {"tokenFile": str(Path(token).resolve())}}]
    cfg["contexts"] = [c for c in cfg.get("contexts") or [] if c.get("name") != wanted] + [
        {"name": wanted, "context": {"cluster": name, "user": name}}]
    try:
        kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        kubeconfig.write_text(yaml.safe_dump(cfg))
        os.chmod(kubeconfig, 0o600)
    except OSError as exc:
        raise DsfError(f"cannot write kube context [ {wanted} ] to {kubeconfig}: "
                       f"{exc.strerror}") from None
    print(f"Created kube context [ {wanted} ] for {uri} (bearer token {token})", flush=True)
    return wanted


# -- helm -----------------------------------------------------------------------------------------
class Helm:
    def __init__(self, kubeconfigs: list[Path], context: str, debug: bool):
        here = Path(sys.argv[0]).resolve().parent
        self.bin = next((c for c in (os.environ.get("HELM_BIN"), shutil.which("helm"),
                                     str(here / "helm")) if c and Path(c).exists()), None)
        if self.bin is None:
            raise DsfError("helm not found on PATH")
        self.kubectl = shutil.which("kubectl") or (str(here / "kubectl")
                                                   if (here / "kubectl").exists() else None)
        self.env = dict(os.environ, KUBECONFIG=os.pathsep.join(str(p) for p in kubeconfigs))
        self.context = context
        self.debug = debug

    def run(self, *args: str, check: bool = True, kube: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.bin, *args] + (["--kube-context", self.context] if kube else [])
        if self.debug:
            print("[debug] helm " + " ".join(args), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if check and proc.returncode != 0:
            raise DsfError(f"helm {' '.join(args[:3])} failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
        return proc

    def kube(self, *args: str, check: bool = True) -> subprocess.CompletedProcess | None:
        if not self.kubectl:
            return None
        proc = subprocess.run([self.kubectl, "--context", self.context, *args],
                              capture_output=True, text=True, env=self.env)
        if check and proc.returncode != 0:
            raise DsfError(f"kubectl {' '.join(args[:3])} failed: {proc.stderr.strip()}")
        return proc


def _values_files(app: dict, base: Path) -> list[str]:
    files = ([app["valuesFile"]] if app.get("valuesFile") else []) + list(app.get("valuesFiles") or [])
    return [f if os.path.isabs(f) else str((base / f).resolve()) for f in files]


def _setting(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _value_args(app: dict, base: Path) -> list[str]:
    args: list[str] = []
    for f in _values_files(app, base):
        args += ["-f", f]
    for k, v in (app.get("set") or {}).items():
        args += ["--set", f"{k}={_setting(v)}"]
    for k, v in (app.get("setString") or {}).items():
        args += ["--set-string", f"{k}={_setting(v)}"]
    return args


def _is_repo_chart(chart: str) -> bool:
    return "/" in chart and not chart.startswith((".", "/")) and not os.path.exists(chart)


def resolve_version(helm: Helm, chart: str, constraint: str) -> str:
    """The newest version of ``chart`` helm finds for ``constraint`` (helmsman asks helm too)."""
    if not _is_repo_chart(chart):
        meta = yaml.safe_load(helm.run("show", "chart", chart, kube=False).stdout) or {}
        return str(meta.get("version"))
    proc = helm.run("search", "repo", chart, "--version", constraint, "-o", "json", kube=False,
                    check=False)
    if proc.returncode == 0:
        for item in json.loads(proc.stdout or "[]"):
            if item.get("name") == chart:
                return str(item["version"])
    raise DsfError(f"chart [ {chart} ] with version [ {constraint} ] is not found in the helm "
                   "repositories")


def _docs(text: str) -> list:
    out = []
    for doc in yaml.safe_load_all(text or ""):
        if not isinstance(doc, dict):
            continue
        hooks = ((doc.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook")
        if not hooks:
            out.append(doc)
    return sorted(out, key=lambda d: json.dumps(d, sort_keys=True, default=str))


def manifest_changed(helm: Helm, app: dict, version: str, base: Path, tmp: Path) -> bool:
    """Render the release as helmsman's kubectl-diff fallback does (no cluster access, so
    ``lookup`` returns nothing) and compare it with the deployed manifest."""
    release, ns = app["name"], app["namespace"]
    rendered = helm.run("template", release, str(app["chart"]), "--version", version, "-n", ns,
                        "--is-upgrade", *_value_args(app, base), kube=False).stdout
    (tmp / f"{release}.{ns}.rendered.yaml").write_text(rendered)
    deployed = helm.run("get", "manifest", release, "-n", ns).stdout
    return _docs(rendered) != _docs(deployed)


# -- the run --------------------------------------------------------------------------------------
def _deployed(helm: Helm, release: str, ns: str) -> dict | None:
    proc = helm.run("list", "-n", ns, "--filter", f"^{re.escape(release)}$", "-a", "-o", "json",
                    check=False)
    if proc.returncode != 0:
        return None
    items = json.loads(proc.stdout or "[]")
    return items[0] if items else None


def _chart_version(listed: dict, chart_name: str) -> str:
    chart = str(listed.get("chart") or "")
    prefix = chart_name.split("/")[-1] + "-"
    return chart[len(prefix):] if chart.startswith(prefix) else chart.rsplit("-", 1)[-1]


def plan_and_apply(dsf: dict, base: Path, opts, kubeconfigs: list[Path], tmp: Path) -> int:
    context = str(dsf.get("context") or "default")
    settings = dsf.get("settings") or {}
    namespaces = dsf.get("namespaces") or {}
    ctx = resolve_context(dsf, kubeconfigs)
    debug = opts.debug or opts.verbose
    helm = Helm(kubeconfigs, ctx, debug)
    execute = opts.apply or opts.destroy
    dry = opts.dry_run or not execute
    global_history = settings.get("globalMaxHistory") or DEFAULT_MAX_HISTORY

    apps = []
    for order, (key, app) in enumerate((dsf.get("apps") or {}).items()):
        app = dict(app)
        app.setdefault("name", key)
        if opts.target and key not in opts.target and app["name"] not in opts.target:
            continue
        if opts.group and app.get("group") not in opts.group:
            continue
        app["priority"] = int(app.get("priority") or 0)
        app["_order"] = order
        apps.append(app)
    apps.sort(key=lambda a: (a["priority"], a["_order"]))

    repos = dsf.get("helmRepos") or {}
    for name, url in repos.items():
        helm.run("repo", "add", "--force-update", name, str(url), kube=False)
    if repos:
        helm.run("repo", "update", kube=False)

    # chart validation: every enabled app's constraint must resolve before anything changes
    resolved: dict[str, str] = {}
    for app in apps:
        if app.get("enabled", False) and not opts.destroy:
            resolved[app["name"]] = resolve_version(helm, str(app["chart"]), str(app["version"]))

    plan: list[tuple[int, str, list[str] | None]] = []

    def protected(app: dict) -> bool:
        return bool((namespaces.get(app["namespace"]) or {}).get("protected")) \
            or bool(app.get("protected"))

    for ns, spec in namespaces.items():
        if opts.destroy:
            break
        spec = spec or {}
        got = helm.kube("get", "namespace", ns, check=False)
        if got is not None and got.returncode != 0:
            plan.append((0, f"Create namespace [ {ns} ]", ["kubectl", "create", "namespace", ns]))
        for kind, verb in (("labels", "label"), ("annotations", "annotate")):
            pairs = [f"{k}={v}" for k, v in (spec.get(kind) or {}).items()]
            if pairs:
                plan.append((0, f"{kind} on namespace [ {ns} ]",
                             ["kubectl", verb, "--overwrite", "namespace", ns, *pairs]))

    keep = set()
    for app in apps:
        release, ns, prio = app["name"], app["namespace"], app["priority"]
        keep.add((release, ns))
        current = _deployed(helm, release, ns)
        if opts.destroy or not app.get("enabled", False):
            if current and protected(app):
                plan.append((prio, f"Release [ {release} ] in namespace [ {ns} ] is PROTECTED. "
                             "Operations are not allowed on this release until protection is "
                             "removed.", None))
            elif current:
                plan.append((prio, f"Delete release [ {release} ] in namespace [ {ns} ]",
                             ["helm", "uninstall", release, "-n", ns]))
            continue
        version = resolved[release]
        if current and protected(app):
            plan.append((prio, f"Release [ {release} ] in namespace [ {ns} ] is PROTECTED. "
                         "Operations are not allowed on this release until protection is removed.",
                         None))
            continue
        if current and current.get("status") == "deployed":
            deployed_version = _chart_version(current, str(app["chart"]))
            if deployed_version != version:
                action = f"Upgrade release [ {release} ] from version [ {deployed_version} ] to"
            elif manifest_changed(helm, app, version, base, tmp):
                action = f"Upgrade release [ {release} ] (manifest changed) at"
            else:
                plan.append((prio, f"Release [ {release} ] version [ {version} ] in namespace "
                             f"[ {ns} ]: no changes", None))
                continue
        else:
            action = f"Install release [ {release} ]"
        history = app.get("maxHistory") or global_history
        cmd = ["helm", "upgrade", "--install", release, str(app["chart"]), "--version", version,
               "-n", ns, "--history-max", str(history),
               "--labels", f"{MANAGED_LABEL}=HELMSMAN,{CONTEXT_LABEL}={context}",
               *_value_args(app, base)]
        if app.get("wait"):
            cmd.append("--wait")
        if app.get("timeout"):
            cmd += ["--timeout", f"{app['timeout']}s"]
        if app.get("description"):
            cmd += ["--description", str(app["description"])]
        plan.append((prio, f"{action} version [ {version} ] in namespace [ {ns} ]", cmd))

    if not opts.destroy and not opts.keep_untracked_releases and not opts.target and not opts.group:
        proc = helm.run("list", "-A", "-a", "-o", "json", "--selector",
                        f"{MANAGED_LABEL}=HELMSMAN,{CONTEXT_LABEL}={context}", check=False)
        if proc.returncode == 0:
            for rel in json.loads(proc.stdout or "[]"):
                if (rel["name"], rel["namespace"]) in keep:
                    continue
                if (namespaces.get(rel["namespace"]) or {}).get("protected"):
                    continue
                plan.append((0, f"Delete untracked release [ {rel['name']} ] in namespace "
                             f"[ {rel['namespace']} ]",
                             ["helm", "uninstall", rel["name"], "-n", rel["namespace"]]))

    print("-------- PLAN starts here --------------", flush=True)
    for i, (prio, desc, _cmd) in enumerate(plan):
        print(f"[ {i} ] {desc} -- priority: {prio}", flush=True)
    print("-------- PLAN ends here ----------------", flush=True)
    if dry:
        return 0
    for i, (prio, desc, cmd) in enumerate(plan):
        if cmd is None:
            continue
        print(f"Executing [ {i} ] {desc} -- priority: {prio}", flush=True)
        if cmd[0] == "kubectl":
            helm.kube(*cmd[1:])
        else:
            helm.run(*cmd[1:])
        print(f"Done [ {i} ] {desc}", flush=True)
    print("Completed successfully", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="helmsman")
    ap.add_argument("-f", "--file", "-spec", action="append", default=[])
    ap.add_argument("--apply", "-apply", action="store_true")
    ap.add_argument("--dry-run", "-dry-run", action="store_true")
    ap.add_argument("--destroy", "-destroy", action="store_true")
    ap.add_argument("--target", "-target", action="append", default=[])
    ap.add_argument("--group", "-group", action="append", default=[])
    ap.add_argument("--keep-untracked-releases", "-keep-untracked-releases", action="store_true")
    ap.add_argument("--debug", "-debug", action="store_true")
    ap.add_argument("--verbose", "-verbose", action="store_true")
    ap.add_argument("--no-banner", "-no-banner", action="store_true")
    ap.add_argument("--no-color", "-no-color", action="store_true")
    ap.add_argument("--kubeconfig", "-kubeconfig")
    ap.add_argument("--subst-env-values", "-subst-env-values", action="store_true")
    ap.add_argument("--no-env-subst", "-no-env-subst", action="store_true")
    ap.add_argument("-v", "--version", action="store_true")
    opts, unknown = ap.parse_known_args(argv)
    if opts.version:
        print(f"Helmsman version: {VERSION}")
        return 0
    if unknown:
        print(f"ERROR: unsupported flags: {' '.join(unknown)}", file=sys.stderr)
        return 1
    if not opts.file:
        print("ERROR: at least one desired state file is required (-f)", file=sys.stderr)
        return 1
    if not opts.no_banner:
        print(f"helmsman {VERSION} (Slipway stand-in driving the real helm)", flush=True)
    try:
        dsf, base = load_dsf(opts.file, subst_env=not opts.no_env_subst)
    except DsfError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    errors = validate(dsf)
    if errors:
        for e in errors:
            print(f"ERROR: {e}", file=sys.stderr)
        print("CRITICAL: desired state validation failed", file=sys.stderr)
        return 1
    tmp = Path(TMP_DIR)  # relative, like helmsman: the working directory must be writable
    try:
        tmp.mkdir(exist_ok=True)
        tmp = tmp.resolve()
    except OSError as exc:
        try:
            where = os.getcwd()
        except OSError:
            where = "a directory that no longer exists"
        print(f"ERROR: stat {TMP_DIR}: {exc.strerror.lower()} (helmsman needs a writable "
              f"working directory; the working directory is {where})", file=sys.stderr)
        return 1
    try:
        return plan_and_apply(dsf, base, opts, _kubeconfig_paths(opts.kubeconfig), tmp)
    except DsfError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
