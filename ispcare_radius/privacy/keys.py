"""Master keys (KEKs): the key file, its environment fallbacks and rotation; no asyncio, asyncpg.

The master keys wrap every data key and blind-index key. They never live in
PostgreSQL: they come from a key file (mode 0400), from the environment variable
``ISPCARE_MASTER_KEY``, or from a systemd credential named ``ispcare_master_key``.
No message, repr or exception raised here carries key material.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ispcare_radius.privacy.secret import Secret

KEY_BYTES: Final = 32
FILE_FORMAT: Final = 1
ENV_VAR: Final = "ISPCARE_MASTER_KEY"
CREDENTIAL_NAME: Final = "ispcare_master_key"
_MAX_VERSION: Final = 0xFFFFFFFF
_MAX_FILE_BYTES: Final = 1 << 20


class KeyFileError(Exception):
    """The master keys are missing, unreadable, badly formed or too widely readable."""


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """Versioned AES-256 key-encryption keys, one of them primary (used for new wraps)."""

    primary_version: int
    keys: Mapping[int, Secret] = field(repr=False)

    def __post_init__(self) -> None:
        frozen = MappingProxyType(dict(self.keys))
        for version, key in frozen.items():
            if not 1 <= version <= _MAX_VERSION:
                raise KeyFileError(f"master key version {version} is out of range")
            if not isinstance(key, Secret) or len(key) != KEY_BYTES:
                raise KeyFileError(f"master key version {version} is not a {KEY_BYTES}-byte key")
        if self.primary_version not in frozen:
            raise KeyFileError(f"primary master key version {self.primary_version} is missing")
        object.__setattr__(self, "keys", frozen)

    def __repr__(self) -> str:
        return f"MasterKeys(primary_version={self.primary_version}, versions={sorted(self.keys)})"

    def primary(self) -> tuple[int, bytes]:
        """The primary version and its key bytes, for wrapping new keys."""
        return self.primary_version, self.keys[self.primary_version].reveal()

    def get(self, version: int) -> bytes:
        """The key bytes of ``version``; ``KeyError`` naming only the version if unknown."""
        try:
            return self.keys[version].reveal()
        except KeyError:
            raise KeyError(f"master key version {version} is not loaded") from None


def init_key_file(path: Path) -> None:
    """Create a new key file holding one random 256-bit key, version 1, as primary.

    The file is created with mode 0400 and its missing parent directories with
    mode 0700. An existing file is never overwritten.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite it")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {1: Secret(secrets.token_bytes(KEY_BYTES))}
    _write_new(path, _encode(1, keys))


def add_key_version(path: Path) -> int:
    """Add a new random key version to the key file, make it primary, and return it.

    Older versions stay in the file so that keys wrapped under them can still be
    unwrapped until they are re-wrapped. The file is replaced atomically.
    """
    path = Path(path)
    current = _parse(_read_file(path), source=str(path))
    version = max(current.keys) + 1
    if version > _MAX_VERSION:
        raise KeyFileError("no master key version left")
    keys = dict(current.keys)
    keys[version] = Secret(secrets.token_bytes(KEY_BYTES))
    _replace(path, _encode(version, keys))
    return version


def remove_key_version(path: Path, version: int) -> None:
    """Remove ``version`` from the key file for good (the KEK is destroyed).

    Refuses the primary version. The caller checks first that nothing is
    still wrapped under it: whatever is, becomes unreadable. The file is
    replaced atomically; a copy of the old key survives only in backups of
    the file itself.
    """
    path = Path(path)
    current = _parse(_read_file(path), source=str(path))
    if version not in current.keys:
        raise KeyFileError(f"master key version {version} is not in {path}")
    if version == current.primary_version:
        raise KeyFileError(f"master key version {version} is the primary; rotate first")
    keys = {v: k for v, k in current.keys.items() if v != version}
    _replace(path, _encode(current.primary_version, keys))


def _replace(path: Path, content: bytes) -> None:
    """Atomically replace ``path``: a new 0400 file, fsynced, renamed over it, dir fsynced."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_new(temp, content)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_master_keys(path: Path | None, *, env: Mapping[str, str]) -> MasterKeys:
    """Load the master keys from ``path``, else from the environment.

    With ``path`` given, the file must exist and be readable by its owner only.
    Without it: ``ISPCARE_MASTER_KEY`` (the key-file JSON, or one base64 key that
    becomes version 1), else the systemd credential ``ispcare_master_key`` in
    ``$CREDENTIALS_DIRECTORY``; otherwise ``KeyFileError``.
    """
    if path is not None:
        path = Path(path)
        return _parse(_read_file(path), source=str(path))
    raw = env.get(ENV_VAR, "").strip()
    if raw:
        if raw.startswith("{"):
            return _parse(raw.encode("utf-8"), source=ENV_VAR)
        return MasterKeys(primary_version=1, keys={1: _decode_key(raw, ENV_VAR, 1)})
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if credentials:
        candidate = Path(credentials) / CREDENTIAL_NAME
        if candidate.exists():
            return _parse(_read_file(candidate), source=str(candidate))
    raise KeyFileError(
        f"no master key: configure a key file, set {ENV_VAR}, "
        f"or provide the systemd credential {CREDENTIAL_NAME}"
    )


def _encode(primary: int, keys: Mapping[int, Secret]) -> bytes:
    document = {
        "format": FILE_FORMAT,
        "primary": primary,
        "keys": {
            str(version): base64.b64encode(key.reveal()).decode("ascii")
            for version, key in sorted(keys.items())
        },
    }
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def _parse(raw: bytes, *, source: str) -> MasterKeys:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{source}: not a valid master key document (JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise KeyFileError(f"{source}: unsupported master key format (expected {FILE_FORMAT})")
    primary = document.get("primary")
    entries = document.get("keys")
    if not isinstance(primary, int) or isinstance(primary, bool):
        raise KeyFileError(f"{source}: 'primary' must be an integer key version")
    if not isinstance(entries, dict) or not entries:
        raise KeyFileError(f"{source}: 'keys' must map versions to base64 keys")
    keys: dict[int, Secret] = {}
    for name, encoded in entries.items():
        if not (isinstance(name, str) and name.isascii() and name.isdigit()):
            raise KeyFileError(f"{source}: key versions must be decimal integers")
        version = int(name)
        if not isinstance(encoded, str):
            raise KeyFileError(f"{source}: key version {version} is not a base64 string")
        keys[version] = _decode_key(encoded, source, version)
    return MasterKeys(primary_version=primary, keys=keys)


def _decode_key(encoded: str, source: str, version: int) -> Secret:
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: key version {version} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{source}: key version {version} is not a {KEY_BYTES}-byte key")
    return Secret(key)


def _read_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: it must not be "
                f"readable or writable by group or others (chmod 0400 {path})"
            )
        if info.st_size > _MAX_FILE_BYTES:
            raise KeyFileError(f"key file {path} is too large to be a key file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(_MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)


def _write_new(path: Path, content: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o400)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be created: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o400)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
