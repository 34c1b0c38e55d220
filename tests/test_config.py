"""Configuration: defaults, environment overrides, validation, extra dictionaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcare_radius.cli.config import ConfigError, load_config, parse_listen
from ispcare_radius.cli.runtime import load_dictionaries

DEBIAN_DICTIONARIES = Path("/usr/share/freeradius")


def test_defaults_listen_on_both_families_and_standard_ports(tmp_path: Path) -> None:
    """With no file, auth is 1812 and acct 1813 on IPv4 and IPv6; no DSN means embedded."""
    config = load_config(None, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert config.server.auth_listen == (("0.0.0.0", 1812), ("::", 1812))
    assert config.server.acct_listen == (("0.0.0.0", 1813), ("::", 1813))
    assert config.database.dsn is None
    assert config.database.embedded_dir == tmp_path / "pgdata"
    assert config.master_key_file == tmp_path / "master.key"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """$ISPCARE_DSN and $ISPCARE_MASTER_KEY_FILE win over the file's values."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[database]\ndsn = "postgresql://file/db"\n[keys]\nmaster_key_file = "/a"\n')
    env = {"ISPCARE_DSN": "postgresql://env/db", "ISPCARE_MASTER_KEY_FILE": "/b"}
    config = load_config(cfg, env=env)
    assert config.database.dsn == "postgresql://env/db"
    assert config.master_key_file == Path("/b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0.0.0:1812", ("0.0.0.0", 1812)), ("[::1]:11812", ("::1", 11812))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT and [IPv6]:PORT both parse."""
    assert parse_listen(text, "x") == expected


@pytest.mark.parametrize("text", ["1812", ":1812", "host:port", "h:70000"])
def test_parse_listen_rejects_junk(text: str) -> None:
    """A listen address without a host or with a bad port is a ConfigError."""
    with pytest.raises(ConfigError):
        parse_listen(text, "server.auth_listen")


def test_shipped_example_config_loads(tmp_path: Path) -> None:
    """config/ispcare-radius.toml, with every setting written out, is valid."""
    example = Path(__file__).resolve().parents[1] / "config" / "ispcare-radius.toml"
    config = load_config(example, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert config.server.reply_cache_ttl == 30
    assert config.cache.ttl == 3600


def test_debian_dictionary_tree_loads_as_an_extra_directory(tmp_path: Path) -> None:
    """Pointing extra_dirs at Debian's FreeRADIUS tree adds its vendors to ours."""
    if not (DEBIAN_DICTIONARIES / "dictionary").exists():
        pytest.fail("Debian's FreeRADIUS dictionaries are missing (install freeradius-common)")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[dictionaries]\nextra_dirs = ["{DEBIAN_DICTIONARIES}"]\n')
    config = load_config(cfg, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    dictionary = load_dictionaries(config.dictionary_dirs)
    assert dictionary.by_name("Ascend-Data-Rate").vendor == 529
    assert dictionary.by_name("Mikrotik-Rate-Limit").code == 8


def test_missing_extra_dictionary_directory_is_an_error(tmp_path: Path) -> None:
    """A configured dictionary directory that does not exist stops start-up."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dictionaries]\nextra_dirs = ["/nonexistent/dicts"]\n')
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(cfg, env={})


def test_auth_methods_are_chosen_by_name(tmp_path: Path) -> None:
    """auth.methods selects the methods; an unknown name is a one-line ConfigError."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[auth]\nmethods = ["pap", "chap"]\n')
    assert load_config(cfg, env={}).auth.methods == ("pap", "chap")
    cfg.write_text('[auth]\nmethods = ["pap", "kerberos"]\n')
    with pytest.raises(ConfigError, match=r"auth\.methods"):
        load_config(cfg, env={})


def test_reject_delay_is_read_from_the_server_section(tmp_path: Path) -> None:
    """[server] reject_delay sets ServerSettings.reject_delay; the default is 1 s."""
    env = {"ISPCARE_STATE_DIR": str(tmp_path)}
    assert load_config(None, env=env).server.reject_delay == 1.0
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nreject_delay = 0.5\n")
    assert load_config(cfg, env=env).server.reject_delay == 0.5
    cfg.write_text("[server]\nreject_delay = 0\n")
    assert load_config(cfg, env=env).server.reject_delay == 0


@pytest.mark.parametrize("value", ["11", "-1", '"1"', "true", "10.01"])
def test_bad_reject_delay_is_a_config_error(tmp_path: Path, value: str) -> None:
    """A reject_delay that is negative, over 10 s or not a number stops the start."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nreject_delay = {value}\n")
    with pytest.raises(ConfigError, match="reject_delay"):
        load_config(cfg, env={"ISPCARE_STATE_DIR": str(tmp_path)})
