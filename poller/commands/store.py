"""``poller store upgrade | version``: the store's schema migrations."""

from __future__ import annotations

import argparse

from poller.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="the store's schema (migrations)")
    ssub = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    up = ssub.add_parser("upgrade", help="apply pending schema migrations to the store")
    up.add_argument("--config", "-c", required=True)
    up.set_defaults(handler=cmd_upgrade)
    ver = ssub.add_parser("version", help="the store's schema revision and this poller's newest")
    ver.add_argument("--config", "-c", required=True)
    ver.set_defaults(handler=cmd_version)


def cmd_upgrade(args) -> int:
    from poller.store import Store

    cfg = load_config(args.config)
    before = Store(cfg.store_target, upgrade=False)
    was = before.current_revision()
    before.close()
    store = Store(cfg.store_target)
    print(f"store {store.path}: schema {was or 'none'} -> {store.revision}")
    store.close()
    return 0


def cmd_version(args) -> int:
    from poller.store import Store, head_revision

    cfg = load_config(args.config)
    store = Store(cfg.store_target, upgrade=False)
    print(f"store {store.path}: schema {store.current_revision() or 'none'}; "
          f"this poller: {head_revision()}")
    store.close()
    return 0
