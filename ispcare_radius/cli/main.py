"""``ispcare-radius`` entry point: parse, configure, dispatch, map errors to exit codes.

Nothing escapes as a traceback: configuration and argument errors exit 2,
runtime failures (database unreachable, bad data) exit 1, each with one line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.cli.args import build_parser
from ispcare_radius.cli.config import Config, ConfigError, load_config


def _config(args: Any) -> Config:
    overrides: dict[str, Any] = {}
    if args.dsn:
        overrides["dsn"] = args.dsn
    if args.master_key_file:
        overrides["master_key_file"] = args.master_key_file
    config = load_config(Path(args.config) if args.config else None, overrides=overrides)
    if args.command == "serve" and (args.auth_port is not None or args.acct_port is not None):
        import dataclasses

        srv = config.server
        changes: dict[str, Any] = {}
        if args.auth_port is not None:
            changes["auth_listen"] = tuple((h, args.auth_port) for h, _ in srv.auth_listen)
        if args.acct_port is not None:
            changes["acct_listen"] = tuple((h, args.acct_port) for h, _ in srv.acct_listen)
        try:
            config = dataclasses.replace(config, server=dataclasses.replace(srv, **changes))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "keys" and args.action != "init":
            from ispcare_radius.cli.keys import run_keys

            return asyncio.run(run_keys(config, args))
        if args.command == "keys":
            from ispcare_radius.cli.admin import keys_init

            return keys_init(config)
        if args.command == "serve":
            from ispcare_radius.cli.serve import serve

            if config.workers > 1:
                from ispcare_radius.cli.workers import run_workers

                return run_workers(config, demo=args.demo)
            return asyncio.run(serve(config, demo=args.demo))
        if args.command == "privacy" and args.action in ("export", "inventory"):
            from ispcare_radius.cli.privacy_export import run_privacy_export

            return run_privacy_export(config, args)
        if args.command == "privacy" and args.action == "erase-due":
            from ispcare_radius.cli.privacy import run_privacy

            return asyncio.run(run_privacy(config, args))
        if args.command == "flags":
            from ispcare_radius.cli.flags import run_flags

            return asyncio.run(run_flags(config, args))
        if args.command == "sessions":
            from ispcare_radius.cli.sessions import run_sessions

            return asyncio.run(run_sessions(config, args))
        if args.command == "feed":
            from ispcare_radius.cli.feeds import run_feed

            return asyncio.run(run_feed(config, args))
        if args.command == "stats":
            from ispcare_radius.cli.stats import run_stats

            return asyncio.run(run_stats(config, args))
        from ispcare_radius.cli.admin import run_admin

        return asyncio.run(run_admin(config, args))
    except ConfigError as exc:
        sys.stderr.write(f"ispcare-radius: error: {exc}\n")
        return 2
    except StoreUnavailable as exc:
        sys.stderr.write(f"ispcare-radius: error: database unavailable: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"ispcare-radius: error: {exc.strerror or exc}\n")
        return 1
    except asyncpg.PostgresError as exc:
        # The SQLSTATE names the failure; the message may quote values.
        sys.stderr.write(f"ispcare-radius: error: database error {exc.sqlstate}\n")
        return 1
    except Exception as exc:  # never a traceback: name the failure, not its values
        sys.stderr.write(f"ispcare-radius: error: unexpected {type(exc).__name__}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())
