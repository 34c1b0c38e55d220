"""Normalisation, blind indexes and log pseudonyms."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispcare_radius.privacy.blind import (
    BlindIndex,
    Pseudonymizer,
    is_locally_administered,
    normalize_mac,
    normalize_user_name,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("user", b"user"),
        ("USER", b"user"),
        ("\uff35\uff33\uff25\uff32", b"user"),  # fullwidth "USER"
        ("Stra\u00dfe", b"strasse"),  # sharp s folds to "ss"
        ("e\u0301", "\u00e9".encode()),  # combining accent composes
        ("\u00c9", "\u00e9".encode()),
        ("\u2168", b"ix"),  # roman numeral nine
        ("\ufb01le", b"file"),  # ligature fi
        (" user ", b" user "),  # spaces are kept
        ("user@Example.NET", b"user@example.net"),
        ("", b""),
    ],
)
def test_normalize_user_name_table(raw: str, expected: bytes) -> None:
    """User names normalise by NFKC and case folding only."""
    assert normalize_user_name(raw) == expected


def test_fullwidth_and_ascii_user_names_collide() -> None:
    """Fullwidth "USER" and "user" give the same normalised bytes, hence the same index."""
    index = BlindIndex(KEY)
    fullwidth = "\uff35\uff33\uff25\uff32"
    assert index.full(normalize_user_name(fullwidth)) == index.full(normalize_user_name("user"))


@given(st.text(max_size=30))
def test_normalize_user_name_is_idempotent(name: str) -> None:
    """Normalising a normalised name changes nothing."""
    try:
        once = normalize_user_name(name)
    except ValueError:
        return  # lone surrogates cannot be encoded
    assert normalize_user_name(once.decode("utf-8")) == once


def test_normalize_user_name_refuses_lone_surrogate_without_echo() -> None:
    """A name that cannot be UTF-8 encoded raises ValueError without quoting it."""
    with pytest.raises(ValueError) as info:
        normalize_user_name("ab\ud800")
    assert "ab" not in str(info.value)


MAC = bytes.fromhex("0a1b2c3d4e5f")


@pytest.mark.parametrize(
    "text",
    [
        "0a:1b:2c:3d:4e:5f",
        "0A:1B:2C:3D:4E:5F",
        "0A-1B-2C-3D-4E-5F",
        "0a-1b-2c-3d-4e-5f",
        "0a1b.2c3d.4e5f",
        "0A1B.2C3D.4E5F",
        "0a1b2c3d4e5f",
        "0A1B2C3D4E5F",
        " 0a:1b:2c:3d:4e:5f\n",
    ],
)
def test_normalize_mac_formats(text: str) -> None:
    """Every common MAC spelling gives the same 6 bytes."""
    assert normalize_mac(text) == MAC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0a:1b:2c:3d:4e",
        "0a:1b:2c:3d:4e:5f:60",
        "0a:1b-2c:3d-4e:5f",
        "0a1b2c3d4e5",
        "0a1b2c3d4e5f0",
        "0g:1b:2c:3d:4e:5f",
        "a:b:c:d:e:f",
        "0a1b:2c3d:4e5f",
        "0a1b.2c3d.4e5f.",
        "0A-1B-2C-3D-4E-5F:ISP-WIFI",
        "user@example.net",
        "10.0.0.1",
        "\uff10a:1b:2c:3d:4e:5f",  # fullwidth digit
        "\u0660a:1b:2c:3d:4e:5f",  # Arabic-Indic digit zero
        "0a:1b:2c:3d:  :5f",  # an octet of spaces
        "0a1b2c3d  5f",
    ],
)
def test_normalize_mac_junk_is_none(text: str) -> None:
    """Anything but the four spellings of six octets gives None."""
    assert normalize_mac(text) is None


# The four spellings as regular expressions: the specification the
# hand-written parser must match exactly.
_SPELLINGS = (
    re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"),
    re.compile(r"[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}"),
    re.compile(r"[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2}"),
    re.compile(r"[0-9A-Fa-f]{12}"),
)


def _by_regex(text: str) -> bytes | None:
    candidate = text.strip()
    if any(form.fullmatch(candidate) for form in _SPELLINGS):
        return bytes.fromhex(candidate.replace(":", "").replace("-", "").replace(".", ""))
    return None


def _mangled(digits: str, seps: list[tuple[int, str]]) -> str:
    for at, sep in seps:
        digits = digits[:at] + sep + digits[at:]
    return digits


@given(
    st.one_of(
        st.text(alphabet="0123456789abcdefABCDEFg:-. \n\t\u0660\uff10", max_size=20),
        # Twelve hex digits with separators (or spaces) anywhere, and the odd
        # non-hex character: near misses of the four spellings.
        st.builds(
            _mangled,
            st.text(alphabet="0123456789abcdefABCDEF \u0660", min_size=10, max_size=13),
            st.lists(st.tuples(st.integers(0, 14), st.sampled_from(":-. ")), max_size=6),
        ),
        st.binary(min_size=6, max_size=6).flatmap(
            lambda mac: st.sampled_from(
                [mac.hex(":"), mac.hex("-"), mac.hex(), f"{mac.hex()[:4]}.{mac.hex()[4:8]}"]
            )
        ),
        st.text(max_size=20),
    )
)
def test_normalize_mac_accepts_exactly_the_four_spellings(text: str) -> None:
    """The parser and the four regular expressions agree on every string."""
    assert normalize_mac(text) == _by_regex(text)


@pytest.mark.parametrize(
    "text", ["0a:1b:2c:3d:4e:5f", "0A-1B-2C-3D-4E-5F", "0a1b.2c3d.4e5f", "0a1b2c3d4e5f"]
)
def test_normalize_mac_agrees_on_every_near_miss(text: str) -> None:
    """Each spelling with any one character replaced, any two swapped, or one
    dropped: the parser accepts exactly what the regular expressions accept."""
    variants = set()
    for i in range(len(text)):
        variants.add(text[:i] + text[i + 1 :])
        for c in ":-. g0F\u0660":
            variants.add(text[:i] + c + text[i + 1 :])
        for j in range(i + 1, len(text)):
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            variants.add("".join(chars))
    for variant in variants:
        assert normalize_mac(variant) == _by_regex(variant), variant


@given(st.binary(min_size=6, max_size=6))
def test_normalize_mac_round_trips_all_spellings(mac: bytes) -> None:
    """Any 6 bytes written in any of the four spellings normalise back to themselves."""
    h = mac.hex()
    spellings = [
        mac.hex(":"),
        mac.hex("-").upper(),
        f"{h[0:4]}.{h[4:8]}.{h[8:12]}",
        h.upper(),
    ]
    for text in spellings:
        assert normalize_mac(text) == mac


def test_is_locally_administered() -> None:
    """The U/L bit of the first octet marks randomised MACs."""
    assert is_locally_administered(bytes.fromhex("020000000001"))
    assert is_locally_administered(bytes.fromhex("da a1 19 00 00 01".replace(" ", "")))
    assert not is_locally_administered(bytes.fromhex("001122334455"))
    assert not is_locally_administered(bytes.fromhex("fc0000000000"))
    with pytest.raises(ValueError):
        is_locally_administered(b"\x02\x00")


def test_blind_index_deterministic_and_keyed() -> None:
    """One key gives the same 32-byte index every time; another key gives another."""
    value = normalize_user_name("synthetic.user@example.net")
    a1, a2 = BlindIndex(KEY).full(value), BlindIndex(KEY).full(value)
    b = BlindIndex(OTHER_KEY).full(value)
    assert a1 == a2 and len(a1) == 32
    assert a1 != b
    assert BlindIndex(KEY).full(b"other") != a1


def test_blind_index_matches_hmac_sha256_vector() -> None:
    """full() is HMAC-SHA256: a vector computed independently with the openssl CLI."""
    # printf abc | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f
    expected = "f0133729c4163dede81e21cd47839256da58171238c8a0d874397c73b14e1e47"
    assert BlindIndex(KEY).full(b"abc").hex() == expected


def test_truncated_is_prefix_of_full() -> None:
    """truncated(bits) is the leading bits of the full index and fits in that many bits."""
    index = BlindIndex(KEY)
    mac = bytes.fromhex("001122334455")
    full = int.from_bytes(index.full(mac), "big")
    for bits in (1, 8, 12, 16, 20, 64, 256):
        t = index.truncated(mac, bits)
        assert 0 <= t < (1 << bits)
        assert t == full >> (256 - bits)
    assert index.truncated(mac) == index.truncated(mac, 16)
    with pytest.raises(ValueError):
        index.truncated(mac, 0)
    with pytest.raises(ValueError):
        index.truncated(mac, 257)


def test_truncated_collides_across_many_values() -> None:
    """A 16-bit index spreads values out but collides among many (search, not identity)."""
    index = BlindIndex(KEY)
    values = {index.truncated(i.to_bytes(6, "big")) for i in range(5000)}
    assert 4000 < len(values) < 5000


def test_blind_index_refuses_short_key_and_hides_key() -> None:
    """A key other than 32 bytes is refused; repr shows no key."""
    with pytest.raises(ValueError):
        BlindIndex(KEY[:16])
    assert KEY.hex() not in repr(BlindIndex(KEY))


def test_pseudonym_stable_short_and_keyed() -> None:
    """The same input gives the same short hex pseudonym under one key, another under another."""
    p = Pseudonymizer(KEY)
    a = p("synthetic.user@example.net")
    assert a == Pseudonymizer(KEY)("synthetic.user@example.net")
    assert len(a) == 10 and all(c in "0123456789abcdef" for c in a)
    assert a != Pseudonymizer(OTHER_KEY)("synthetic.user@example.net")
    assert a != p("synthetic.user2@example.net")
    assert len(Pseudonymizer(KEY, length=16)("x")) == 16
    assert "synthetic" not in a


def test_pseudonymizer_validates_settings() -> None:
    """Short keys and lengths outside 4..64 are refused."""
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")
    with pytest.raises(ValueError):
        Pseudonymizer(KEY, length=3)
    with pytest.raises(ValueError):
        Pseudonymizer(KEY, length=65)
    assert Pseudonymizer(KEY)("\ud800")  # lone surrogates never make logging fail
