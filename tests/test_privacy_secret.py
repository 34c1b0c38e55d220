"""The Secret value type."""

from __future__ import annotations

import pickle

import pytest

from ispcare_radius.privacy.secret import Secret


def test_secret_repr_and_str_are_redacted() -> None:
    """repr, str and f-strings of a Secret never show its value."""
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert "hunter2" not in repr([s, {"k": s}])


def test_secret_reveal_and_equals() -> None:
    """reveal returns the UTF-8 bytes; equals compares them."""
    s = Secret("pässword")
    assert s.reveal() == "pässword".encode()
    assert s.equals("pässword".encode())
    assert not s.equals(b"password")
    assert Secret(b"x") == Secret("x") and Secret(b"x") != Secret(b"y")


def test_secret_refuses_pickling() -> None:
    """A Secret cannot be pickled (which would copy it out in clear)."""
    with pytest.raises(TypeError):
        pickle.dumps(Secret(b"k"))
