"""``poller plugin push | fetch | status | cycle``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from poller.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    plugin = sub.add_parser("plugin", help="plugin artifacts: push, fetch, status")
    psub = plugin.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)

    p = psub.add_parser("push", help="publish a plugin .jar (--version) or fast-track it (--env)")
    p.add_argument("file")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--env", help="fast track straight to this environment (refused in production)")
    p.add_argument("--version", help="semver or 'staging' (fast track: optional)")
    p.add_argument("--plugin", help="plugin name (default: from the file name)")
    p.add_argument("--no-restart", action="store_true",
                   help="fast track: only publish; the next cycle restarts the servers")
    p.set_defaults(handler=cmd_push)

    p = psub.add_parser("fetch", help="download a server type's plugin set (what fetch-plugins.sh does)")
    p.add_argument("--config", "-c")
    p.add_argument("--env")
    p.add_argument("--type", dest="server_type")
    p.add_argument("--dest", default="plugins")
    p.add_argument("--script", action="store_true", help="print the POSIX sh fetch script and exit")
    p.set_defaults(handler=cmd_fetch)

    p = psub.add_parser("status", help="servers of an environment: reported plugins vs wanted")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = psub.add_parser("cycle", help="one plugin cycle for an environment: move channels, restart outdated")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--env", required=True)
    p.set_defaults(handler=cmd_cycle)


def _cycle(cfg, env: str) -> dict:
    from poller.errors import SlipwayError
    from poller.runtime import Runtime

    if env not in cfg.plugins.environments:
        raise SlipwayError(f"no environment '{env}' in plugins.environments")
    return Runtime(cfg).plugin_rollout(env).cycle(env).as_dict()


def cmd_push(args) -> int:
    from poller.artifacts.publish import plugin_name, publish
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    path = Path(args.file)
    plugin = args.plugin or plugin_name(path)
    artifact = publish(Runtime(cfg).artifacts, cfg.plugins, plugin, path.read_bytes(), version=args.version,
                       env=args.env)
    out = {"plugin": plugin, "version": artifact.version, "digest": artifact.digest}
    if args.env and not args.no_restart:
        out["cycle"] = _cycle(cfg, args.env)
    print(json.dumps(out, indent=2))
    return 1 if out.get("cycle", {}).get("errors") else 0  # type: ignore[union-attr]


def cmd_fetch(args) -> int:
    from poller.artifacts import FETCH_SCRIPT
    from poller.errors import SlipwayError
    from poller.settings.plugins import channel_tag

    if args.script:
        sys.stdout.write(FETCH_SCRIPT.read_text())
        return 0
    if not (args.config and args.env and args.server_type):
        raise SlipwayError("give --config, --env and --type (or --script)")
    cfg = load_config(args.config)
    st = cfg.plugins.server_types.get(args.server_type)
    if st is None:
        raise SlipwayError(f"no server type '{args.server_type}' in plugins.server_types")
    from poller.runtime import Runtime

    store = Runtime(cfg).artifacts
    dest = Path(args.dest)
    lines = []
    for plugin in st.plugins:
        artifact = store.get(plugin, channel_tag(args.env, args.server_type))
        if artifact is None:
            raise SlipwayError(f"{plugin}: no channel {channel_tag(args.env, args.server_type)} yet")
        store.download(artifact, dest)
        lines.append(f"{plugin} {artifact.version} {artifact.digest}\n")
    (dest / "plugins.txt").write_text("".join(lines))
    sys.stdout.write("".join(lines))
    return 0


def cmd_status(args) -> int:
    from poller.artifacts.servers import find_servers
    from poller.commands.tables import table
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    servers = find_servers(Runtime(cfg).docker_client(cfg.plugins.docker_url)(), cfg.plugins.probe, args.env)
    rows = [{"server": s.name, "type": t, "plugins": s.report(), "busy": s.busy()}
            for t, members in sorted(servers.items()) for s in members]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(["server", "type", "busy", "plugins"],
                    [[r["server"], r["type"], "yes" if r["busy"] else "",
                      " ".join(f"{p}@{d[7:19]}" for p, d in (r["plugins"] or {}).items()) or "down"]  # type: ignore[union-attr]
                     for r in rows]))
    return 0


def cmd_cycle(args) -> int:
    out = _cycle(load_config(args.config), args.env)
    print(json.dumps(out, indent=2))
    return 1 if out["errors"] else 0
