"""``ispcare-radius keys rotate|reencrypt|retire|status``: the key hierarchy's life cycle.

Composition root for store.rotation. KEK rotation order (DESIGN.md section 5):

1. ``keys rotate`` adds a new master key version to the key file and makes
   it primary, then re-wraps every wrapped key under it, in batches that
   commit one by one; ``keys rotate --resume`` finishes a stopped run.
   Running servers keep serving: they hold the data keys unwrapped, and when
   they meet a key wrapped under a version they have not loaded they re-read
   the key file (the key file must therefore be the same file, or copied to
   every server, before the rotation starts).
2. ``keys retire VERSION`` destroys an old version once nothing uses it.

``keys reencrypt`` replaces the subscribers' data keys themselves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ispcare_radius.cli.args import die
from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import open_store
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import (
    KeyFileError,
    MasterKeys,
    add_key_version,
    load_master_keys,
    remove_key_version,
)
from ispcare_radius.store import rotation
from ispcare_radius.store.spoolcodec import CodecError, decode_segment_header

_SEGMENT_SUFFIX = ".seg"


def add_keys_parser(keys: Any) -> None:
    """The ``keys`` actions besides ``init``."""
    p = keys.add_parser(
        "rotate", help="add a new master key version and re-wrap every key under it"
    )
    p.add_argument("--resume", action="store_true", help="finish a stopped rotation only")
    p.add_argument("--batch", type=int, default=1000, help="subscribers per transaction")
    p.add_argument("--no-progress", action="store_true")
    p = keys.add_parser(
        "reencrypt", help="give subscribers new data keys and re-seal their data (resumable)"
    )
    p.add_argument(
        "--subscriber-id",
        type=int,
        action="append",
        metavar="ID",
        help="only this subscriber (repeatable); default: all",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=20,
        help="subscribers per progress update (each commits on its own)",
    )
    p.add_argument("--limit", type=int, help="stop after this many subscribers")
    p.add_argument(
        "--epoch",
        action="store_true",
        help="instead: re-seal data under older epoch keys with the current epoch key",
    )
    p.add_argument("--no-progress", action="store_true")
    p = keys.add_parser("retire", help="destroy a master key version nothing uses any more")
    p.add_argument("version", type=int)
    keys.add_parser("status", help="master key versions and what each one wraps")


def _actor() -> str:
    from ispcare_radius.cli.sessions import operator

    return operator()


def _key_file(config: Config) -> Path:
    path = Path(config.master_key_file)
    if not path.is_file():
        die(
            f"key file {path} does not exist: rotation and retirement rewrite the key file"
            " (keys from ISPCARE_MASTER_KEY or a systemd credential are rotated by replacing them)"
        )
    return path


def _load(path: Path) -> MasterKeys:
    try:
        return load_master_keys(path, env={})
    except KeyFileError as exc:
        die(str(exc))


@contextmanager
def _bar(total: int, *, unit: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, disable=not enabled, file=sys.stderr)

    def advance(n: int) -> None:
        bar.update(n)

    try:
        yield advance
    finally:
        bar.close()


async def run_keys(config: Config, args: argparse.Namespace) -> int:
    """Dispatch ``keys rotate|reencrypt|retire|status``."""
    if args.action == "rotate":
        return await _rotate(config, args)
    if args.action == "reencrypt":
        return await _reencrypt(config, args)
    if args.action == "retire":
        return await _retire(config, args.version)
    return await _status(config)


async def _rotate(config: Config, args: argparse.Namespace) -> int:
    if args.batch < 1:
        die("--batch must be positive", 2)
    path = _key_file(config)
    async with open_store(config) as store:
        masters = store.masters
        unfinished = await rotation.unfinished_rotation(store.pool, masters.primary_version)
        if args.resume:
            print(f"resuming: {unfinished} keys to re-wrap under version {masters.primary_version}")
        else:
            if unfinished:
                die(
                    f"{unfinished} keys are not yet wrapped under the primary version"
                    f" {masters.primary_version}: finish with 'keys rotate --resume' first"
                )
            try:
                version = add_key_version(path)
            except KeyFileError as exc:
                die(str(exc))
            masters = _load(path)
            print(f"master key version {version} added to {path} and made primary")
        total = await rotation.unfinished_rotation(store.pool, masters.primary_version)
        with _bar(total, unit="keys", enabled=not args.no_progress) as progress:
            report = await rotation.rewrap_all(
                store.pool, masters, batch_size=args.batch, progress=progress, actor=_actor()
            )
    print(
        f"re-wrapped under version {report.primary}: {report.subscribers} data keys,"
        f" {report.system_keys} system keys, {report.epoch_keys} epoch keys"
    )
    if report.failed:
        print(f"{len(report.failed)} data keys did not unwrap (ids {report.failed[:20]})")
    if report.remaining:
        print(f"{report.remaining} keys still under an older version: run 'keys rotate --resume'")
        return 1
    return 0


async def _reencrypt(config: Config, args: argparse.Namespace) -> int:
    if args.batch < 1 or (args.limit is not None and args.limit < 1):
        die("--batch and --limit must be positive", 2)
    if args.epoch:
        return await _reencrypt_epoch(config, args)
    async with open_store(config) as store:
        pending, resumed = await rotation.start_reencrypt(
            store.pool, subscriber_ids=args.subscriber_id, actor=_actor()
        )
        if resumed:
            print(f"resuming a stopped re-encryption: {pending} subscribers left")
        todo = pending if args.limit is None else min(pending, args.limit)
        done = values = 0
        failed: list[int] = []
        with _bar(todo, unit="subscribers", enabled=not args.no_progress) as progress:
            # Subscribers skipped for a lock get another pass while passes progress.
            while True:
                left = None if args.limit is None else args.limit - done
                report = await rotation.reencrypt_pending(
                    store.pool,
                    store.data_keys.masters,
                    batch_size=args.batch,
                    limit=left,
                    progress=progress,
                    actor=_actor(),
                )
                done += report.subscribers
                values += report.values
                failed = report.failed
                if (
                    report.subscribers == 0
                    or not report.skipped
                    or (args.limit is not None and done >= args.limit)
                ):
                    break
    print(f"{done} subscribers re-encrypted ({values} values re-sealed)")
    if failed:
        print(f"{len(failed)} subscribers have values that did not open (ids {failed[:20]})")
    if report.pending:
        print(f"{report.pending} subscribers still pending: run 'keys reencrypt' again")
        return 1
    return 0


async def _reencrypt_epoch(config: Config, args: argparse.Namespace) -> int:
    async with open_store(config) as store:
        with _bar(0, unit="values", enabled=not args.no_progress) as progress:
            report = await rotation.reencrypt_epoch_data(
                store.pool,
                store.keys.epoch,
                batch_size=max(args.batch, 100),
                progress=progress,
                actor=_actor(),
            )
    print(f"{report.values} epoch-sealed values moved to epoch key version {report.version}")
    if report.unreadable:
        print(f"{report.unreadable} values are under destroyed epoch keys and stay unreadable")
    return 0


def spool_segments_under(directory: Path, version: int) -> int:
    """Spool segment files whose data key is wrapped under master key ``version``."""
    if not directory.is_dir():
        return 0
    count = 0
    for path in directory.iterdir():
        if path.suffix != _SEGMENT_SUFFIX:
            continue
        try:
            with path.open("rb") as fh:
                wrapped, _ = decode_segment_header(fh.read(4096))
            used = rotation.wrapped_kek_version(wrapped)
        except (OSError, CodecError, DecryptError):
            count += 1  # unreadable: count it, a human must look before destroying a key
            continue
        count += used == version
    return count


async def _retire(config: Config, version: int) -> int:
    path = _key_file(config)
    masters = _load(path)
    if version not in masters.keys:
        die(f"master key version {version} is not in {path}")
    if version == masters.primary_version:
        die(f"master key version {version} is the primary: run 'keys rotate' first")
    async with open_store(config) as store:
        usage = await rotation.kek_usage(store.pool, version)
        usage["spool_segments"] = spool_segments_under(config.accounting.spool_dir, version)
        if any(usage.values()):
            counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in usage.items())
            die(
                f"master key version {version} is still in use ({counts});"
                " run 'keys rotate --resume' and let the spool drain first"
            )
        try:
            remove_key_version(path, version)
        except KeyFileError as exc:
            die(str(exc))
        await rotation.audit_retire(store.pool, version, actor=_actor())
    print(f"master key version {version} removed from {path}: destroyed")
    print("copies of the key file in backups still hold it: destroy those too")
    return 0


async def _status(config: Config) -> int:
    async with open_store(config) as store:
        masters = store.masters
        status = await rotation.key_status(store.pool)
    print(f"master key versions: {sorted(masters.keys)} (primary {masters.primary_version})")
    for version in sorted(set(masters.keys) | set(status.data_keys_by_kek)):
        loaded = "" if version in masters.keys else " (NOT IN KEY FILE)"
        print(
            f"  version {version}{loaded}: {status.data_keys_by_kek.get(version, 0)} data keys,"
            f" {status.system_keys_by_kek.get(version, 0)} system keys,"
            f" {sum(e.kek_version == version for e in status.epoch_keys)} epoch keys"
        )
    versions = ", ".join(f"v{v}: {n}" for v, n in sorted(status.data_key_versions.items()))
    print(f"data key versions: {versions or '(no subscribers)'}")
    if status.reencrypt_pending:
        print(f"re-encryption pending for {status.reencrypt_pending} subscribers")
    print("epoch keys:")
    for e in status.epoch_keys:
        print(
            f"  {e.period}  version {e.version}  kek {e.kek_version}"
            f"  {e.starts_at:%Y-%m-%d} .. {e.ends_at:%Y-%m-%d}"
        )
    return 0
