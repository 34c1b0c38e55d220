"""The ``device`` commands: bind MACs to subscribers, list, remove, block and unblock them.

Composition root: turns parsed arguments into ``store.devices`` calls and
prints results. Never prints a MAC it was not given on the command line.
"""

from __future__ import annotations

import argparse
from typing import Any

from ispcare_radius.cli.args import OneLineParser, die
from ispcare_radius.cli.runtime import Store
from ispcare_radius.store.devices import DeviceRepository


def add_device_parser(sub: Any) -> None:
    """Add ``device add|list|remove|block|unblock`` to the top-level subparsers."""
    device = sub.add_parser("device", help="devices for MAC authentication").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = device.add_parser("add", help="bind a MAC to a subscriber")
    p.add_argument("mac", help="aa:bb:cc:dd:ee:ff, AA-BB-.., aabb.ccdd.eeff or aabbccddeeff")
    p.add_argument("--subscriber", required=True, metavar="USER", help="the owner's user name")
    p = device.add_parser("list", help="list a subscriber's devices")
    p.add_argument("--subscriber", required=True, metavar="USER")
    p = device.add_parser("remove", help="unbind a MAC")
    p.add_argument("mac")
    p = device.add_parser("block", help="refuse a MAC whatever the method")
    p.add_argument("mac")
    p.add_argument("--reason", help="why (no personal values)")
    p = device.add_parser("unblock", help="take a MAC off the blocked list")
    p.add_argument("mac")


async def run_device(store: Store, args: argparse.Namespace) -> int:
    """Run one ``device`` command; exit status 1 with one line on failure."""
    repo = DeviceRepository(store.pool, store.keys.blind_index, store.data_keys)
    try:
        if args.action == "add":
            device_id = await repo.add(args.mac, subscriber=args.subscriber)
            print(f"added device {device_id}")
        elif args.action == "list":
            views = await repo.list(subscriber=args.subscriber)
            if not views:
                print("(none)")
            for v in views:
                seen = "-" if v.last_seen is None else v.last_seen.isoformat(timespec="seconds")
                print(f"{v.id}  {v.mac}  added {v.created_at:%Y-%m-%d}  last seen {seen}")
        elif args.action == "remove":
            if not await repo.remove(args.mac):
                die("no device has this MAC")
            print("removed")
        elif args.action == "block":
            added = await repo.block(args.mac, reason=args.reason)
            print("blocked" if added else "already blocked")
        else:
            removed = await repo.unblock(args.mac)
            print("unblocked" if removed else "was not blocked")
    except LookupError:
        die("no such subscriber")
    except ValueError as exc:
        die(str(exc))
    return 0
