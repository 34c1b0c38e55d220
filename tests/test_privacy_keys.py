"""Master key file, environment fallback and KEK rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from ispcare_radius.privacy.keys import (
    KeyFileError,
    MasterKeys,
    add_key_version,
    init_key_file,
    load_master_keys,
)
from ispcare_radius.privacy.secret import Secret

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _write(path: Path, document: object, mode: int = 0o400) -> None:
    path.write_text(json.dumps(document))
    path.chmod(mode)


def test_init_creates_owner_only_file_with_one_primary_key(tmp_path: Path) -> None:
    """init_key_file writes mode 0400 in a new 0700 directory, holding version 1 as primary."""
    path = tmp_path / "etc" / "ispcare" / "master.key"
    init_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    keys = load_master_keys(path, env={})
    version, key = keys.primary()
    assert version == 1 and len(key) == 32
    document = json.loads(path.read_text())
    assert document["format"] == 1 and document["primary"] == 1 and list(document["keys"]) == ["1"]


def test_init_keys_are_random(tmp_path: Path) -> None:
    """Two new key files hold different keys."""
    init_key_file(tmp_path / "a.key")
    init_key_file(tmp_path / "b.key")
    a = load_master_keys(tmp_path / "a.key", env={}).primary()[1]
    b = load_master_keys(tmp_path / "b.key", env={}).primary()[1]
    assert a != b


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """init_key_file raises KeyFileError for an existing file and leaves it unchanged."""
    path = tmp_path / "master.key"
    init_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        init_key_file(path)
    assert path.read_bytes() == before


def test_load_refuses_group_or_world_readable_file(tmp_path: Path) -> None:
    """A 0644 key file is refused with a message naming the mode and the fix."""
    path = tmp_path / "master.key"
    _write(path, {"format": 1, "primary": 1, "keys": {"1": _b64(KEY_A)}}, mode=0o644)
    with pytest.raises(KeyFileError) as info:
        load_master_keys(path, env={})
    message = str(info.value)
    assert "0644" in message and "chmod 0400" in message
    assert _b64(KEY_A) not in message


@pytest.mark.parametrize("mode", [0o440, 0o404, 0o600 | 0o020, 0o401])
def test_load_refuses_any_group_or_other_bit(tmp_path: Path, mode: int) -> None:
    """Any permission bit for group or others makes the key file unacceptable."""
    path = tmp_path / "master.key"
    _write(path, {"format": 1, "primary": 1, "keys": {"1": _b64(KEY_A)}}, mode=mode)
    with pytest.raises(KeyFileError, match="group or others"):
        load_master_keys(path, env={})


def test_load_accepts_0600_file(tmp_path: Path) -> None:
    """An owner read-write file is accepted and its keys are returned."""
    path = tmp_path / "master.key"
    _write(path, {"format": 1, "primary": 2, "keys": {"1": _b64(KEY_A), "2": _b64(KEY_B)}}, 0o600)
    keys = load_master_keys(path, env={"ISPCARE_MASTER_KEY": _b64(KEY_A)})
    assert keys.primary() == (2, KEY_B)
    assert keys.get(1) == KEY_A


def test_missing_file_is_an_error_even_with_env(tmp_path: Path) -> None:
    """A configured key file that does not exist is an error, not a silent env fallback."""
    with pytest.raises(KeyFileError, match="does not exist"):
        load_master_keys(tmp_path / "absent.key", env={"ISPCARE_MASTER_KEY": _b64(KEY_A)})


def test_env_single_base64_key_is_version_1() -> None:
    """ISPCARE_MASTER_KEY holding one base64 key loads it as primary version 1."""
    keys = load_master_keys(None, env={"ISPCARE_MASTER_KEY": _b64(KEY_A) + "\n"})
    assert keys.primary() == (1, KEY_A)


def test_env_json_document() -> None:
    """ISPCARE_MASTER_KEY holding the key-file JSON loads every version."""
    document = {"format": 1, "primary": 7, "keys": {"3": _b64(KEY_A), "7": _b64(KEY_B)}}
    keys = load_master_keys(None, env={"ISPCARE_MASTER_KEY": json.dumps(document)})
    assert keys.primary() == (7, KEY_B)
    assert keys.get(3) == KEY_A
    assert sorted(keys.keys) == [3, 7]


def test_systemd_credential_is_the_last_fallback(tmp_path: Path) -> None:
    """Without a path or env key, the credential file in $CREDENTIALS_DIRECTORY is used."""
    _write(tmp_path / "ispcare_master_key", {"format": 1, "primary": 1, "keys": {"1": _b64(KEY_B)}})
    keys = load_master_keys(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert keys.primary() == (1, KEY_B)


def test_no_source_at_all_is_an_error() -> None:
    """No path, no env key and no credential raise KeyFileError naming the options."""
    with pytest.raises(KeyFileError, match="ISPCARE_MASTER_KEY"):
        load_master_keys(None, env={})


@pytest.mark.parametrize(
    "raw",
    [
        "not base64 !!",
        _b64(KEY_A[:16]),
        '{"format": 2, "primary": 1, "keys": {"1": "AAAA"}}',
        '{"format": 1, "primary": 2, "keys": {"1": "' + _b64(KEY_A) + '"}}',
        '{"format": 1, "primary": 1, "keys": {"x": "' + _b64(KEY_A) + '"}}',
        '{"format": 1, "primary": true, "keys": {"1": "' + _b64(KEY_A) + '"}}',
        '{"format": 1, "primary": 1, "keys": {}}',
        "{broken json",
    ],
)
def test_malformed_env_values_are_refused_without_echoing_them(raw: str) -> None:
    """Bad formats, short keys, a missing primary or broken JSON raise KeyFileError."""
    with pytest.raises(KeyFileError) as info:
        load_master_keys(None, env={"ISPCARE_MASTER_KEY": raw})
    assert _b64(KEY_A) not in str(info.value)
    # No chained exception (which could quote the input) is shown with it.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_add_key_version_rotates_primary_and_keeps_old(tmp_path: Path) -> None:
    """add_key_version adds version 2 as primary, keeps version 1 and the 0400 mode."""
    path = tmp_path / "master.key"
    init_key_file(path)
    old = load_master_keys(path, env={})
    assert add_key_version(path) == 2
    new = load_master_keys(path, env={})
    assert new.primary_version == 2
    assert new.get(1) == old.get(1)
    assert new.get(2) != old.get(1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert add_key_version(path) == 3
    assert sorted(os.listdir(tmp_path)) == ["master.key"]


def test_master_keys_never_show_key_material() -> None:
    """repr and unknown-version errors name versions only."""
    keys = MasterKeys(primary_version=1, keys={1: Secret(KEY_A)})
    assert "1" in repr(keys) and KEY_A.hex() not in repr(keys) and repr(KEY_A) not in repr(keys)
    with pytest.raises(KeyError, match="version 9"):
        keys.get(9)


def test_master_keys_validate_in_constructor() -> None:
    """A missing primary or a key of the wrong length is refused when building MasterKeys."""
    with pytest.raises(KeyFileError):
        MasterKeys(primary_version=2, keys={1: Secret(KEY_A)})
    with pytest.raises(KeyFileError):
        MasterKeys(primary_version=1, keys={1: Secret(KEY_A[:31])})


def test_master_keys_mapping_is_read_only() -> None:
    """The keys mapping of a MasterKeys cannot be changed after construction."""
    source = {1: Secret(KEY_A)}
    keys = MasterKeys(primary_version=1, keys=source)
    source[2] = Secret(KEY_B)
    assert list(keys.keys) == [1]
    with pytest.raises(TypeError):
        keys.keys[2] = Secret(KEY_B)  # type: ignore[index]
