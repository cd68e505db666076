#!/usr/bin/env python3
"""Stand-in for helmsman, used only when the real one cannot be built.

The module proxy this project reaches refuses github.com/mkubaczyk/helmsman
(403 for every version and path), so `scripts/toolchain build` installs this
script as `helmsman` in the toolchain bin directory and records that in
substitutes.json.  It reads a YAML Desired State File and drives the real helm
binary (found on PATH or beside this launcher) for the subset Slipway uses:

  context, metadata, settings (ignored except kubeContext),
  namespaces: {NAME: {labels, annotations}},
  helmRepos: {NAME: URL},
  apps: {RELEASE: {name, namespace, enabled, chart, version, valuesFile,
                   valuesFiles, set, setString, priority, wait, timeout,
                   description, group}}

Flags: -f/--file (repeatable, later files override), --apply, --dry-run,
--destroy, --target, --group, --keep-untracked-releases, --debug, --verbose,
--no-banner, --kubeconfig, --subst-env-values, --skip-validation, -v/--version.

Apps are processed in ascending priority (priority is 0 or negative, the most
negative first, as in helmsman); a release is upgraded only when its chart,
version or values differ from what this tool last applied (kept in the helm
release's storage labels), so re-applying an unchanged file is a no-op.
Releases labelled as managed by the same context but no longer in the file
are uninstalled unless --keep-untracked-releases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

VERSION = "v4.0.5-slipway-compat"
MANAGED_LABEL = "MANAGED-BY"
CONTEXT_LABEL = "HELMSMAN_CONTEXT"
HASH_LABEL = "SLIPWAY_HELMSMAN_HASH"


def _helm() -> str:
    here = Path(sys.argv[0]).resolve().parent
    for cand in (os.environ.get("HELM_BIN"), shutil.which("helm"), str(here / "helm")):
        if cand and Path(cand).exists():
            return cand
    sys.exit("helmsman: helm not found on PATH")


def _kubectl() -> str | None:
    return shutil.which("kubectl")


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
            sys.exit(f"helmsman (stand-in): TOML desired state files are not supported: {f}")
        text = p.read_text()
        text = os.path.expandvars(text) if subst_env else text
        data = yaml.safe_load(text) or {}
        merged = _merge(merged, data)
    return merged, base


def _run(cmd: list[str], dry: bool, debug: bool, check: bool = True) -> subprocess.CompletedProcess | None:
    if debug or dry:
        print(("[dry-run] " if dry else "[debug] ") + " ".join(cmd), flush=True)
    if dry:
        return None
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if debug and proc.stdout:
        print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        print(f"ERROR: command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}",
              file=sys.stderr, flush=True)
        sys.exit(1)
    return proc


def _values_files(app: dict, base: Path) -> list[str]:
    files = []
    if app.get("valuesFile"):
        files.append(app["valuesFile"])
    files += list(app.get("valuesFiles") or [])
    return [str((base / f).resolve()) if not os.path.isabs(f) else f for f in files]


def _app_hash(app: dict, values_files: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: app.get(k) for k in ("chart", "version", "set", "setString", "namespace")},
                        sort_keys=True, default=str).encode())
    for f in values_files:
        h.update(Path(f).read_bytes() if Path(f).exists() else f.encode())
    return h.hexdigest()[:32]


def _resolve_version(helm: str, chart: str, constraint) -> str | None:
    """The newest version of repo chart ``chart`` matching ``constraint`` (None for local charts)."""
    if "/" not in chart or chart.startswith((".", "/")) or os.path.exists(chart):
        return None
    cmd = [helm, "search", "repo", chart, "-o", "json"]
    if constraint:
        cmd += ["--version", str(constraint)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    for item in json.loads(proc.stdout or "[]"):
        if item.get("name") == chart:
            return str(item.get("version"))
    return None


def _deployed(helm: str, release: str, ns: str) -> dict | None:
    proc = subprocess.run([helm, "list", "-n", ns, "--filter", f"^{release}$", "-a", "-o", "json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    items = json.loads(proc.stdout or "[]")
    return items[0] if items else None


def _stored_labels(release: str, ns: str, revision: int) -> dict:
    kubectl = _kubectl()
    if not kubectl:
        return {}
    proc = subprocess.run([kubectl, "get", "secret", "-n", ns, f"sh.helm.release.v1.{release}.v{revision}",
                           "-o", "json"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout).get("metadata", {}).get("labels", {}) or {}


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
    ap.add_argument("--skip-validation", "-skip-validation", action="store_true")
    ap.add_argument("--no-env-subst", "-no-env-subst", action="store_true")
    ap.add_argument("-v", "--version", action="store_true")
    opts, unknown = ap.parse_known_args(argv)
    if opts.version:
        print(f"Helmsman version: {VERSION}")
        return 0
    if unknown:
        print(f"helmsman (stand-in): ignoring unsupported flags: {' '.join(unknown)}", file=sys.stderr)
    if not opts.file:
        print("helmsman: at least one desired state file is required (-f)", file=sys.stderr)
        return 1
    if opts.kubeconfig:
        os.environ["KUBECONFIG"] = opts.kubeconfig
    if not opts.no_banner:
        print(f"helmsman {VERSION} (Slipway stand-in driving the real helm)", flush=True)

    dsf, base = load_dsf(opts.file, subst_env=not opts.no_env_subst)
    context = str(dsf.get("context") or "default")
    helm = _helm()
    execute = opts.apply or opts.destroy
    dry = opts.dry_run or not execute
    debug = opts.debug or opts.verbose

    apps: dict = dsf.get("apps") or {}
    selected = []
    for key, app in apps.items():
        app = dict(app or {})
        app.setdefault("name", key)
        if opts.target and key not in opts.target and app["name"] not in opts.target:
            continue
        if opts.group and app.get("group") not in opts.group:
            continue
        if not app.get("namespace"):
            print(f"ERROR: app [ {key} ] has no namespace", file=sys.stderr)
            return 1
        if not app.get("chart") and app.get("enabled", True):
            print(f"ERROR: app [ {key} ] has no chart", file=sys.stderr)
            return 1
        prio = int(app.get("priority") or 0)
        if prio > 0:
            print(f"ERROR: app [ {key} ] priority must be 0 or negative, got {prio}", file=sys.stderr)
            return 1
        app["priority"] = prio
        selected.append(app)
    # stable order: priority, then order in the file
    selected.sort(key=lambda a: a["priority"])

    # namespaces
    kubectl = _kubectl()
    for ns, spec in (dsf.get("namespaces") or {}).items():
        spec = spec or {}
        if kubectl and not opts.destroy:
            exists = subprocess.run([kubectl, "get", "namespace", ns], capture_output=True).returncode == 0
            if not exists:
                print(f"Plan: create namespace [ {ns} ]", flush=True)
                _run([kubectl, "create", "namespace", ns], dry, debug)
            for kind, flag in (("labels", "label"), ("annotations", "annotate")):
                pairs = [f"{k}={v}" for k, v in (spec.get(kind) or {}).items()]
                if pairs:
                    _run([kubectl, flag, "--overwrite", "namespace", ns, *pairs], dry, debug)

    # repositories
    repos = dsf.get("helmRepos") or {}
    for name, url in repos.items():
        _run([helm, "repo", "add", "--force-update", name, str(url)], False, debug)
    if repos:
        _run([helm, "repo", "update"], False, debug)

    plan: list[tuple[int, str, list[str]]] = []
    keep = set()
    for app in selected:
        release, ns = app["name"], app["namespace"]
        keep.add((release, ns))
        current = _deployed(helm, release, ns)
        enabled = app.get("enabled", True)
        if opts.destroy or not enabled:
            if current:
                plan.append((app["priority"], f"Delete release [ {release} ] in namespace [ {ns} ]",
                             [helm, "uninstall", release, "-n", ns]))
            continue
        vfiles = _values_files(app, base)
        # Like helmsman, compare against the version the constraint resolves to now, so a
        # newer chart inside the range upgrades the release.
        resolved = _resolve_version(helm, str(app["chart"]), app.get("version"))
        if resolved:
            app = {**app, "version": resolved}
        digest = _app_hash(app, vfiles)
        if current and current.get("status") == "deployed":
            labels = _stored_labels(release, ns, int(current.get("revision", 0)))
            if labels.get(HASH_LABEL) == digest:
                print(f"Plan: release [ {release} ] in namespace [ {ns} ] is up to date -- priority: "
                      f"{app['priority']}", flush=True)
                continue
            action = "Upgrade"
        else:
            action = "Install"
        cmd = [helm, "upgrade", "--install", release, str(app["chart"]), "-n", ns,
               "--labels", f"{MANAGED_LABEL}=HELMSMAN,{CONTEXT_LABEL}={context},{HASH_LABEL}={digest}"]
        if app.get("version"):
            cmd += ["--version", str(app["version"])]
        for f in vfiles:
            cmd += ["-f", f]
        for k, v in (app.get("set") or {}).items():
            cmd += ["--set", f"{k}={v}"]
        for k, v in (app.get("setString") or {}).items():
            cmd += ["--set-string", f"{k}={v}"]
        if app.get("wait"):
            cmd.append("--wait")
        if app.get("timeout"):
            cmd += ["--timeout", f"{app['timeout']}s" if str(app["timeout"]).isdigit() else str(app["timeout"])]
        if app.get("description"):
            cmd += ["--description", str(app["description"])]
        plan.append((app["priority"], (f"{action} release [ {release} ] version [ {app.get('version', '')} ] "
                     f"in namespace [ {ns} ]"), cmd))

    if not opts.destroy and not opts.keep_untracked_releases and not opts.target and not opts.group:
        proc = subprocess.run([helm, "list", "-A", "-a", "-o", "json", "--selector",
                               f"{MANAGED_LABEL}=HELMSMAN,{CONTEXT_LABEL}={context}"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            for rel in json.loads(proc.stdout or "[]"):
                if (rel["name"], rel["namespace"]) not in keep:
                    plan.append((0, (f"Delete untracked release [ {rel['name']} ] in namespace "
                                 f"[ {rel['namespace']} ]"),
                                 [helm, "uninstall", rel["name"], "-n", rel["namespace"]]))

    print("-------- PLAN starts here --------------", flush=True)
    for i, (prio, desc, _cmd) in enumerate(plan):
        print(f"[ {i} ] {desc} -- priority: {prio}", flush=True)
    print("-------- PLAN ends here ----------------", flush=True)
    if dry:
        return 0
    for i, (prio, desc, cmd) in enumerate(plan):
        print(f"Executing [ {i} ] {desc} -- priority: {prio}", flush=True)
        _run(cmd, False, debug)
        print(f"Done [ {i} ] {desc}", flush=True)
    print("Completed successfully", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
