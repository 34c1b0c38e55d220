"""The Secret value type."""

from __future__ import annotations

import pickle

import pytest

from ispcare_radius.privacy.secret import Secret, typable_token


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


def test_typable_tokens_never_look_like_command_line_options() -> None:
    # Generated secrets and passwords are pasted into radtest/radclient
    # argument lists, where a leading "-" is read as an option.
    tokens = [typable_token(16) for _ in range(2000)]
    assert all(len(t) == 16 and t.isalnum() and t.isascii() for t in tokens)
    assert len(set(tokens)) == len(tokens)
