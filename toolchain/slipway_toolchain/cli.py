"""``scripts/toolchain``: the command line over the package."""

from __future__ import annotations

import sys
import time

from oci_push import ImagePushError

from .base import ClusterStartError, ToolchainError
from .buildkit import BuildKitd, build_buildkit
from .cache import Toolchain, _okg, build
from .cluster import Cluster

USAGE = """usage: scripts/toolchain COMMAND [--state-dir DIR]

  build   build every missing binary into the cache (idempotent): Kubernetes tools, then BuildKit
  build kube | build buildkit
          build only the Kubernetes toolchain / only buildkitd + buildctl
  buildkitd up|down|env
          start (ready when `buildctl debug workers` lists a worker) / stop / show one buildkitd
          (root, OCI worker with runc) on unix://<state-dir>/buildkitd.sock
  up      start etcd, the control plane, kwok + fake nodes and ChartMuseum (re-runnable);
          --node also starts the real node (containerd + kubelet, toolchain/slipway_toolchain/node.py)
          and waits for it to be Ready; --okg (implies --node) also installs and runs
          OpenKruiseGame + Kruise (toolchain/slipway_toolchain/okg.py)
  down    stop what `up` started; removes the node's pods, containers, netns, mounts
  env     print the shell export lines for a running cluster
  where   print the cache bin directory
  build-okg  build kruise-game-manager and kruise-manager into their own cache entry

Cache: $SLIPWAY_TOOLCHAIN_DIR (default /var/cache/slipway/toolchain)/<versions-key>/bin
       BuildKit: $SLIPWAY_TOOLCHAIN_DIR/buildkit-<version>_r<recipe>/bin
State: --state-dir or $SLIPWAY_STATE_DIR (default /tmp/slipway-cluster)
       buildkitd: --state-dir or $SLIPWAY_BUILDKIT_STATE_DIR (default /tmp/slipway-buildkit)
"""


#: command -> (the words it may take as its one argument, the flags it accepts)
_SHAPES: dict[str, tuple[set[str], set[str]]] = {
    "build": ({"all", "kube", "buildkit"}, set()), "build-okg": (set(), set()),
    "buildkitd": ({"up", "down", "env"}, set()), "up": (set(), {"--node", "--okg"}),
    "down": (set(), set()), "env": (set(), set()), "where": (set(), set()),
}


def _misuse(argv: list[str]) -> str | None:
    """What is wrong with ``argv`` (without --state-dir), or None: checked before anything
    starts, so a typo (``up --nodes``) never runs the command without it."""
    cmd, rest = argv[0], argv[1:]
    if cmd not in _SHAPES:
        return f"unknown command {cmd!r}"
    words, flags = _SHAPES[cmd]
    for arg in rest:
        if arg.startswith("-") and arg not in flags:
            return f"{cmd}: unknown option {arg!r}"
    extra = [a for a in rest if not a.startswith("-")]
    if len(extra) > 1 or any(a not in words for a in extra):
        return f"{cmd}: unexpected argument {' '.join(extra)!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    state_dir = None
    if "--state-dir" in argv:
        i = argv.index("--state-dir")
        if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            print(USAGE + "\nerror: --state-dir needs a directory", file=sys.stderr)
            return 2
        state_dir = argv[i + 1]
        del argv[i:i + 2]
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    problem = "a command is needed" if not argv else _misuse(argv)
    if problem:
        print(USAGE + f"\nerror: {problem}", file=sys.stderr)
        return 2
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
    except (ToolchainError, ClusterStartError, ImagePushError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
