"""AES-256-GCM field encryption and key wrapping."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from ispcare_radius.privacy.crypto import (
    DecryptError,
    DecryptFailure,
    FieldCipher,
    field_aad,
    new_data_key,
    unwrap_key,
    wrap_key,
    wrapped_key_version,
)
from ispcare_radius.privacy.keys import MasterKeys, add_key_version, init_key_file, load_master_keys
from ispcare_radius.privacy.secret import Secret

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VALUE = b"synthetic-user-0001@example.net:pppoe:40b"  # about 40 bytes
AAD = field_aad("subscribers", "user_name", 42, 42)


def test_round_trip() -> None:
    """A sealed value opens to the same bytes under the same key, version and aad."""
    cipher = FieldCipher(KEY, 3)
    assert cipher.open(cipher.seal(VALUE, AAD), AAD) == VALUE


def test_blob_layout() -> None:
    """A blob is format 0x01, uint32 big-endian version, 12-byte nonce, ciphertext and tag."""
    blob = FieldCipher(KEY, 0x01020304).seal(VALUE, AAD)
    assert blob[0] == 0x01
    assert struct.unpack(">I", blob[1:5]) == (0x01020304,)
    assert len(blob) == 1 + 4 + 12 + len(VALUE) + 16
    assert VALUE not in blob


def test_blob_opens_with_plain_aesgcm_given_header_in_aad() -> None:
    """The ciphertext is standard AES-256-GCM with header || aad as associated data."""
    blob = FieldCipher(KEY, 5).seal(VALUE, AAD)
    assert AESGCM(KEY).decrypt(blob[5:17], blob[17:], blob[:5] + AAD) == VALUE


def test_same_value_seals_differently_each_time() -> None:
    """Fresh random nonces make two seals of one value differ."""
    cipher = FieldCipher(KEY, 1)
    assert cipher.seal(VALUE, AAD) != cipher.seal(VALUE, AAD)


@pytest.mark.parametrize(
    "other",
    [
        field_aad("subscribers", "user_name", 43, 42),
        field_aad("subscribers", "user_name", 42, 43),
        field_aad("subscribers", "password", 42, 42),
        field_aad("auth_events", "user_name", 42, 42),
        field_aad("subscribers", "user_name", "42", 42),
        field_aad("subscribers", "user_name", 42, None),
    ],
)
def test_ciphertext_moved_elsewhere_fails(other: bytes) -> None:
    """A blob copied to another row, column, table or subscriber does not open."""
    cipher = FieldCipher(KEY, 1)
    blob = cipher.seal(VALUE, AAD)
    with pytest.raises(DecryptError) as info:
        cipher.open(blob, other)
    assert info.value.reason is DecryptFailure.AUTHENTICATION


def test_tampering_any_byte_fails() -> None:
    """Flipping any single bit anywhere in the blob makes open fail."""
    cipher = FieldCipher(KEY, 1)
    blob = cipher.seal(VALUE, AAD)
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= bit
            with pytest.raises(DecryptError):
                cipher.open(bytes(tampered), AAD)


def test_truncation_at_every_length_fails() -> None:
    """Every proper prefix of a blob is refused."""
    cipher = FieldCipher(KEY, 1)
    blob = cipher.seal(VALUE, AAD)
    for length in range(len(blob)):
        with pytest.raises(DecryptError):
            cipher.open(blob[:length], AAD)


def test_wrong_key_version_fails_with_reason() -> None:
    """A cipher for version 2 refuses a version-1 blob, naming the reason."""
    blob = FieldCipher(KEY, 1).seal(VALUE, AAD)
    with pytest.raises(DecryptError) as info:
        FieldCipher(KEY, 2).open(blob, AAD)
    assert info.value.reason is DecryptFailure.KEY_VERSION


def test_wrong_key_same_version_fails() -> None:
    """Another key under the same version number does not open the blob."""
    blob = FieldCipher(KEY, 1).seal(VALUE, AAD)
    with pytest.raises(DecryptError):
        FieldCipher(OTHER_KEY, 1).open(blob, AAD)


def test_unknown_format_byte_is_named() -> None:
    """A blob with format byte 0x02 is refused as unknown_format."""
    blob = bytearray(FieldCipher(KEY, 1).seal(VALUE, AAD))
    blob[0] = 0x02
    with pytest.raises(DecryptError) as info:
        FieldCipher(KEY, 1).open(bytes(blob), AAD)
    assert info.value.reason is DecryptFailure.UNKNOWN_FORMAT


def test_decrypt_error_message_has_no_content() -> None:
    """The DecryptError message names the reason only, never plaintext or aad."""
    blob = FieldCipher(KEY, 1).seal(VALUE, AAD)
    with pytest.raises(DecryptError) as info:
        FieldCipher(KEY, 1).open(blob, b"other")
    assert str(info.value) == "decryption failed: authentication"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_cipher_refuses_bad_key_and_version() -> None:
    """Keys other than 32 bytes and versions beyond uint32 are refused, without echo."""
    with pytest.raises(ValueError) as info:
        FieldCipher(KEY[:16], 1)
    assert KEY[:16].hex() not in str(info.value)
    with pytest.raises(ValueError):
        FieldCipher(KEY, 1 << 32)
    assert "00010203" not in repr(FieldCipher(KEY, 1))


def test_field_aad_is_unambiguous() -> None:
    """Shifting text between parts, or str vs int row keys, gives different aad."""
    assert field_aad("ab", "c", 1, 1) != field_aad("a", "bc", 1, 1)
    assert field_aad("t", "c", "1", 1) != field_aad("t", "c", 1, 1)
    assert field_aad("t", "c", 1, None) != field_aad("t", "c", 1, 0)
    assert field_aad("t", "c", 1, 2) == field_aad("t", "c", 1, 2)


parts = st.tuples(
    st.text(max_size=5),
    st.text(max_size=5),
    st.one_of(st.text(max_size=5), st.integers(-(10**6), 10**6)),
    st.one_of(st.none(), st.integers(0, 10**6)),
)


@given(parts, parts)
def test_field_aad_injective(
    a: tuple[str, str, str | int, int | None], b: tuple[str, str, str | int, int | None]
) -> None:
    """Distinct (table, column, row, subscriber) tuples never share an aad."""
    if a != b or type(a[2]) is not type(b[2]):
        assert field_aad(*a) != field_aad(*b)
    else:
        assert field_aad(*a) == field_aad(*b)


@given(st.binary(max_size=512), st.binary(max_size=64))
def test_round_trip_property(plaintext: bytes, aad: bytes) -> None:
    """Any plaintext and aad round-trip through seal and open."""
    cipher = FieldCipher(KEY, 9)
    assert cipher.open(cipher.seal(plaintext, aad), aad) == plaintext


def test_new_data_key_is_32_random_bytes() -> None:
    """new_data_key returns 32 bytes, different each call."""
    a, b = new_data_key(), new_data_key()
    assert len(a) == 32 and len(b) == 32 and a != b


def _masters(primary: int, **keys: bytes) -> MasterKeys:
    return MasterKeys(
        primary_version=primary, keys={int(v[1:]): Secret(k) for v, k in keys.items()}
    )


def test_wrap_unwrap_round_trip() -> None:
    """A wrapped data key unwraps under the same purpose and names the KEK version."""
    masters = _masters(4, v4=KEY)
    data_key = new_data_key()
    wrapped = wrap_key(masters, data_key, purpose="subscriber:42")
    assert data_key not in wrapped
    assert wrapped_key_version(wrapped) == 4
    assert unwrap_key(masters, wrapped, purpose="subscriber:42") == data_key


def test_unwrap_with_wrong_purpose_fails() -> None:
    """A key wrapped for subscriber 42 does not unwrap as subscriber 43 or a system key."""
    masters = _masters(1, v1=KEY)
    wrapped = wrap_key(masters, new_data_key(), purpose="subscriber:42")
    for purpose in ("subscriber:43", "system:blind_index", "subscriber:42 "):
        with pytest.raises(DecryptError):
            unwrap_key(masters, wrapped, purpose=purpose)


def test_wrapped_key_is_not_a_field_ciphertext() -> None:
    """A wrapped key does not open as a field value under the KEK, whatever the aad."""
    masters = _masters(1, v1=KEY)
    wrapped = wrap_key(masters, new_data_key(), purpose="subscriber:42")
    with pytest.raises(DecryptError):
        FieldCipher(KEY, 1).open(wrapped, b"subscriber:42")


def test_unwrap_with_retired_version_fails() -> None:
    """Unwrapping a key whose KEK version is not loaded raises DecryptError key_version."""
    wrapped = wrap_key(_masters(1, v1=KEY), new_data_key(), purpose="system:blind_index")
    with pytest.raises(DecryptError) as info:
        unwrap_key(_masters(2, v2=OTHER_KEY), wrapped, purpose="system:blind_index")
    assert info.value.reason is DecryptFailure.KEY_VERSION


def test_wrap_refuses_wrong_length_data_key() -> None:
    """Only 32-byte data keys are wrapped."""
    with pytest.raises(ValueError):
        wrap_key(_masters(1, v1=KEY), b"short", purpose="subscriber:1")


def test_kek_rotation_keeps_old_wraps_readable(tmp_path: Path) -> None:
    """After add_key_version, old wraps still unwrap and new wraps use the new version."""
    path = tmp_path / "master.key"
    init_key_file(path)
    before = load_master_keys(path, env={})
    data_key = new_data_key()
    old_wrap = wrap_key(before, data_key, purpose="subscriber:7")
    assert wrapped_key_version(old_wrap) == 1

    add_key_version(path)
    after = load_master_keys(path, env={})
    assert unwrap_key(after, old_wrap, purpose="subscriber:7") == data_key
    new_wrap = wrap_key(after, data_key, purpose="subscriber:7")
    assert wrapped_key_version(new_wrap) == 2
    assert unwrap_key(after, new_wrap, purpose="subscriber:7") == data_key
    # The old key set cannot read what the new primary wrapped.
    with pytest.raises(DecryptError):
        unwrap_key(before, new_wrap, purpose="subscriber:7")


def test_wrapped_key_version_refuses_junk() -> None:
    """wrapped_key_version raises DecryptError for short or foreign blobs."""
    with pytest.raises(DecryptError):
        wrapped_key_version(b"\x01\x00")
    with pytest.raises(DecryptError):
        wrapped_key_version(b"\x09" + bytes(40))


def test_field_aad_layout_is_frozen() -> None:
    """The aad encoding (stored ciphertexts depend on it) is tag, uint32 length, bytes per part."""

    def part(tag: bytes, value: bytes) -> bytes:
        return tag + len(value).to_bytes(4, "big") + value

    expected = (
        part(b"d", b"ispcare-radius/field/v1")
        + part(b"s", b"nas")
        + part(b"s", b"secret")
        + part(b"s", b"bras-1")
        + part(b"n", b"")
    )
    assert field_aad("nas", "secret", "bras-1", None) == expected
    assert field_aad("subscribers", "mac_lock", 7, 7).endswith(part(b"i", b"7") + part(b"i", b"7"))
