"""Detection thresholds and actions: one frozen settings object, built once from ``[detect]``.

Defaults are DESIGN.md section 6 (taken from the published behaviour of Auth0,
Okta, Entra ID, Keycloak and fail2ban). Pure: no I/O; a bad value raises
``ValueError`` naming the setting, which the configuration loader reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final


class Rule(StrEnum):
    """The rules; each value is the stable slug stored in ``flags.rule``."""

    BRUTE_FORCE = "brute_force"
    PASSWORD_SPRAY = "password_spray"
    NEW_COUNTRY = "new_country"
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    DEVICE_MANY_ACCOUNTS = "device_many_accounts"
    ACCOUNT_MANY_DEVICES = "account_many_devices"
    UNUSUAL_HOUR = "unusual_hour"
    CONCURRENT_SESSIONS = "concurrent_sessions"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Action(StrEnum):
    """What a finding leads to, in escalating order (see ``ACTION_RANK``)."""

    LOG = "log"  # a log line, no flag row
    FLAG = "flag"  # a row in ``flags``
    NOTIFY = "notify"  # a flag and an outbox event for billing
    WALLED_GARDEN = "walled_garden"  # a flag; the next accepted login goes to the walled garden
    REJECT = "reject"  # a flag; the subject is rejected for the cool-down


ACTION_RANK: Final = MappingProxyType({a: i for i, a in enumerate(Action)})
# Actions that change a reply; ``monitor`` mode turns them into a flag.
ENFORCING: Final = frozenset({Action.WALLED_GARDEN, Action.REJECT})


class Mode(StrEnum):
    """``monitor`` flags only (for the first days of a deployment); ``enforce`` acts."""

    MONITOR = "monitor"
    ENFORCE = "enforce"


@dataclass(frozen=True, slots=True)
class BruteForce:
    """Rejects for one account: >= ``short_count`` in ``short_window`` s or
    >= ``long_count`` in ``long_window`` s. Guessing when the failures offered
    at least ``guessing_distinct`` different passwords; a CPE retrying one
    stale password offers one."""

    short_count: int = 10
    short_window: float = 600.0
    long_count: int = 30
    long_window: float = 12 * 3600.0
    guessing_distinct: int = 3
    bucket: float = 3600.0


@dataclass(frozen=True, slots=True)
class PasswordSpray:
    """One source: more than ``max_names`` user names failing in ``names_window``
    s, or more than ``max_failures`` failures in ``failures_window`` s."""

    max_names: int = 15
    names_window: float = 300.0
    max_failures: int = 100
    failures_window: float = 86400.0
    bucket: float = 3600.0


@dataclass(frozen=True, slots=True)
class NewCountry:
    """A country not among the account's last ``history`` logins; quiet until
    ``quiet_logins`` logins and ``quiet_days`` days have been seen."""

    history: int = 20
    quiet_logins: int = 10
    quiet_days: float = 14.0
    bucket: float = 86400.0


@dataclass(frozen=True, slots=True)
class ImpossibleTravel:
    """Faster than ``max_speed_kmh`` between two logins at least ``min_distance_km``
    apart, both after subtracting the two locations' accuracy radii."""

    max_speed_kmh: float = 805.0
    min_distance_km: float = 500.0
    bucket: float = 86400.0


@dataclass(frozen=True, slots=True)
class DeviceManyAccounts:
    """One MAC logged in to more than ``max_accounts`` accounts in ``window`` s."""

    max_accounts: int = 3
    window: float = 86400.0
    bucket: float = 86400.0


@dataclass(frozen=True, slots=True)
class AccountManyDevices:
    """One account from more than ``max_devices`` MACs in ``window`` s; locally
    administered (randomised) MACs are not counted."""

    max_devices: int = 5
    window: float = 86400.0
    bucket: float = 86400.0


@dataclass(frozen=True, slots=True)
class UnusualHour:
    """A login in an hour of day (UTC) that holds less than ``max_share`` of the
    account's logins, once ``min_history`` logins are known. Score only."""

    min_history: int = 20
    max_share: float = 0.02
    bucket: float = 86400.0


@dataclass(frozen=True, slots=True)
class ConcurrentSessions:
    """The plan's Simultaneous-Use limit refused a login (aaa/pipeline.py)."""

    bucket: float = 3600.0


RuleSettings = (
    BruteForce
    | PasswordSpray
    | NewCountry
    | ImpossibleTravel
    | DeviceManyAccounts
    | AccountManyDevices
    | UnusualHour
    | ConcurrentSessions
)

# Only proven guessing (high: distinct wrong PAP passwords) blocks by default.
# Medium brute force (CHAP/MS-CHAP, no password digest) may be a CPE retrying
# one stale password after every cool-down, and a spray source may stand for
# many subscribers behind one address: both are flagged, never held, unless
# the operator chooses otherwise.
_DEFAULT_ACTIONS: Final[Mapping[Rule, Mapping[Severity, Action]]] = {
    Rule.BRUTE_FORCE: {Severity.HIGH: Action.REJECT},
    Rule.PASSWORD_SPRAY: {},
    Rule.NEW_COUNTRY: {},
    Rule.IMPOSSIBLE_TRAVEL: {Severity.HIGH: Action.NOTIFY},
    Rule.DEVICE_MANY_ACCOUNTS: {},
    Rule.ACCOUNT_MANY_DEVICES: {},
    Rule.UNUSUAL_HOUR: {Severity.LOW: Action.LOG},
    Rule.CONCURRENT_SESSIONS: {},
}


def _default_actions() -> Mapping[tuple[Rule, Severity], Action]:
    table = {(r, s): Action.FLAG for r in Rule for s in Severity}
    for rule, by_severity in _DEFAULT_ACTIONS.items():
        for severity, action in by_severity.items():
            table[rule, severity] = action
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True)
class DetectSettings:
    """Everything the detector needs; ``actions`` maps (rule, severity) to an action."""

    enabled: bool = True
    mode: Mode = Mode.MONITOR
    cooldown: float = 15 * 60.0
    # Bounds of the in-memory state: subjects per map (LRU), and entries
    # (remembered names, MACs, failures) across every subject's lists, the
    # least recently used subjects forgotten first. Each list is also capped
    # by its rule's threshold (the rule needs no more to fire).
    max_subjects: int = 100_000
    max_entries: int = 1_000_000
    # How far back ``rebuild`` replays auth events after a restart.
    rebuild_hours: float = 24.0
    # Accuracy radius given to a NAS location (fixed lines: the POP, not the home).
    nas_accuracy_km: float = 50.0
    brute_force: BruteForce = field(default_factory=BruteForce)
    password_spray: PasswordSpray = field(default_factory=PasswordSpray)
    new_country: NewCountry = field(default_factory=NewCountry)
    impossible_travel: ImpossibleTravel = field(default_factory=ImpossibleTravel)
    device_many_accounts: DeviceManyAccounts = field(default_factory=DeviceManyAccounts)
    account_many_devices: AccountManyDevices = field(default_factory=AccountManyDevices)
    unusual_hour: UnusualHour = field(default_factory=UnusualHour)
    concurrent_sessions: ConcurrentSessions = field(default_factory=ConcurrentSessions)
    actions: Mapping[tuple[Rule, Severity], Action] = field(default_factory=_default_actions)

    def __post_init__(self) -> None:
        if self.cooldown <= 0 or self.rebuild_hours <= 0 or self.nas_accuracy_km < 0:
            raise ValueError("cooldown_minutes and rebuild_hours must be positive")
        if self.max_subjects < 1:
            raise ValueError("max_subjects must be >= 1")
        for rule in Rule:
            _check_rule(rule.value, self.rule(rule))
            # Unusual hour scores only: it never blocks alone.
            if rule is Rule.UNUSUAL_HOUR:
                for sev in Severity:
                    if self.actions[rule, sev] in ENFORCING:
                        raise ValueError(
                            "unusual_hour.actions: score only, no reject/walled_garden"
                        )
        if self.max_entries < self.largest_list():
            raise ValueError(
                f"max_entries must be at least {self.largest_list()} (one subject's longest list)"
            )

    def largest_list(self) -> int:
        """The longest history one subject may keep: a rule's threshold plus one.

        The rules count "more than" a threshold (or look back ``count``
        failures), so one entry beyond it is all they ever need.
        """
        return 1 + max(
            self.brute_force.short_count,
            self.brute_force.long_count,
            self.password_spray.max_names,
            self.password_spray.max_failures,
            self.device_many_accounts.max_accounts,
            self.account_many_devices.max_devices,
        )

    def rule(self, rule: Rule) -> RuleSettings:
        """The thresholds of ``rule``."""
        found: RuleSettings = getattr(self, rule.value)
        return found

    def action(self, rule: Rule, severity: Severity) -> Action:
        """The configured action, downgraded to ``flag`` in monitor mode."""
        action = self.actions[rule, severity]
        if self.mode is Mode.MONITOR and action in ENFORCING:
            return Action.FLAG
        return action


def _check_rule(name: str, settings: RuleSettings) -> None:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not value > 0:
            raise ValueError(f"detect.{name}.{f.name} must be positive")
    if isinstance(settings, UnusualHour) and not settings.max_share < 1:
        raise ValueError("detect.unusual_hour.max_share must be below 1")


_TOP: Final[dict[str, type | tuple[type, ...]]] = {
    "enabled": bool,
    "mode": str,
    "cooldown_minutes": (int, float),
    "max_subjects": int,
    "max_entries": int,
    "rebuild_hours": (int, float),
    "nas_accuracy_km": (int, float),
}


def settings_from_toml(doc: Mapping[str, Any]) -> DetectSettings:
    """``DetectSettings`` from the ``[detect]`` table; ValueError naming a bad setting.

    Each rule is a sub-table (``[detect.brute_force]``) with its thresholds
    (windows in seconds, ``quiet_days`` in days) and an ``actions`` table
    of severity -> action.
    """
    base = DetectSettings()
    top: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    actions = dict(base.actions)
    for key, value in doc.items():
        if key in _TOP:
            if isinstance(value, bool) and _TOP[key] is not bool:
                raise ValueError(f"detect.{key}: wrong type")
            if not isinstance(value, _TOP[key]):
                raise ValueError(f"detect.{key}: wrong type")
            top[key] = value
            continue
        try:
            rule = Rule(key)
        except ValueError:
            raise ValueError(f"unknown setting detect.{key}") from None
        if not isinstance(value, dict):
            raise ValueError(f"[detect.{key}] must be a table")
        rules[rule.value] = _rule_from_toml(rule, base.rule(rule), value, actions)
    try:
        mode = Mode(top.pop("mode", base.mode))
    except ValueError:
        raise ValueError("detect.mode must be 'monitor' or 'enforce'") from None
    if "cooldown_minutes" in top:
        top["cooldown"] = float(top.pop("cooldown_minutes")) * 60.0
    return replace(base, mode=mode, actions=MappingProxyType(actions), **top, **rules)


def _rule_from_toml(
    rule: Rule,
    default: RuleSettings,
    table: Mapping[str, Any],
    actions: dict[tuple[Rule, Severity], Action],
) -> RuleSettings:
    known = {f.name: f.type for f in fields(default)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "actions":
            if not isinstance(value, dict):
                raise ValueError(f"detect.{rule}.actions must be a table")
            for sev, act in value.items():
                try:
                    actions[rule, Severity(sev)] = Action(act)
                except ValueError:
                    raise ValueError(
                        f"detect.{rule}.actions.{sev}: severity low/medium/high,"
                        " action log/flag/notify/walled_garden/reject"
                    ) from None
            continue
        if key not in known:
            raise ValueError(f"unknown setting detect.{rule}.{key}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"detect.{rule}.{key}: wrong type")
        if known[key] == "int" and not isinstance(value, int):
            raise ValueError(f"detect.{rule}.{key} must be an integer")
        values[key] = value
    return replace(default, **values)
