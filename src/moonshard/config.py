"""The service's settings: flags, then ``MOONSHARD_<NAME>`` variables, then ``moonshard.toml``,
then defaults (SERVICE.md's configuration table).

``Settings.resolve`` is given every source explicitly (no reading of ``os.environ`` behind a
caller's back), so tests and embedders build settings from plain mappings.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from moonshard.engine import DEFAULT_DATABASE_URL
from moonshard.errors import MoonshardError
from moonshard.limits import Limits, parse_size
from moonshard.store import sqlite_path

__all__ = [
    "ADMIN_TOKEN_FILE",
    "CONFIG_FILE",
    "DEFAULT_URL",
    "ClientSettings",
    "ConfigError",
    "Settings",
    "admin_token_path",
    "data_folder",
]

CONFIG_FILE = "moonshard.toml"
ADMIN_TOKEN_FILE = "admin-token"
DEFAULT_URL = "http://127.0.0.1:8080"
# Where the admin token lives when the database is not a local SQLite file.
_FALLBACK_DATA_FOLDER = Path("moonshard-data")
_ENV_PREFIX = "MOONSHARD_"


class ConfigError(MoonshardError):
    """A setting has a value moonshard cannot use; the message names where it came from."""


# -- value parsers: each takes a flag, an environment string or a TOML value ---------------------
def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _optional_text(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


def _whole(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(value) if isinstance(value, int) else int(_text(value).strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {number}")
        return number
    return parse


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        number = float(value) if isinstance(value, int | float) else float(_text(value).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < number < 1e6:
        raise ValueError(f"expected a positive number of seconds, got {number}")
    return number


def _days(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of days")
    try:
        number = float(value) if isinstance(value, int | float) else float(_text(value).strip())
    except ValueError:
        raise ValueError(f"expected a number of days, got {value!r}") from None
    if not 0 < number <= 36_500:
        raise ValueError(f"expected a positive number of days, got {number}")
    return number


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a size such as 25MiB")
    size = parse_size(value)
    if size < 1024 * 1024:
        raise ValueError(f"expected at least 1MiB, got {value!r}")
    return size


def _topology(value: object) -> str:
    text = _text(value).strip().lower()
    if text not in ("thread", "process", "ray"):
        raise ValueError(f"expected thread, process or ray, got {value!r}")
    return text


def _database_url(value: object) -> str:
    url = _text(value).strip()
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        sqlite_path(url)  # raises ValueError with a clear message
    elif scheme not in ("postgresql", "postgres"):
        # Only the scheme is echoed: the rest of a URL may hold a password.
        raise ValueError(f"unsupported scheme {scheme!r}: use sqlite:///PATH or "
                         "postgresql://USER@HOST:PORT/DATABASE")
    return url


def _http_url(value: object) -> str:
    url = _text(value).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


def _intents(value: object) -> int:
    from moonshard.discord.intents import parse_intents  # noqa: PLC0415 - imports hikari

    return parse_intents(value)


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    name: str  # as in SERVICE.md, and MOONSHARD_<name> in the environment
    parse: Callable[[object], Any]
    secret: bool = False


_SPECS: tuple[_Spec, ...] = (
    _Spec("DATABASE_URL", _database_url, secret=True),
    _Spec("TOPOLOGY", _topology),
    _Spec("WORKERS", _whole(1, 1024)),
    _Spec("HOST", lambda value: _text(value).strip()),
    _Spec("PORT", _whole(0, 65535)),
    _Spec("ADMIN_TOKEN", _optional_text, secret=True),
    _Spec("DISCORD_TOKEN", _optional_text, secret=True),
    _Spec("DISCORD_API_URL", _http_url),
    # Not in SERVICE.md's table: the gateway intents (names or a number).
    _Spec("DISCORD_INTENTS", _intents),
    _Spec("MEMORY_LIMIT", _size),
    _Spec("CPU_LIMIT", _seconds),
    _Spec("RAY_ADDRESS", _optional_text),
    # Not in SERVICE.md's table: how long a stop waits for in-flight work, and how much of
    # each tenant's log is kept (lines, days).
    _Spec("STOP_DEADLINE", _seconds),
    # Not in SERVICE.md's table: the pattern guard's bound on estimated matching steps.
    _Spec("PATTERN_STEPS", _whole(1000, 10**15)),
    _Spec("LOG_LINES", _whole(1, 10_000_000)),
    _Spec("LOG_DAYS", _days),
)


def data_folder(database_url: str) -> Path:
    """Where the service keeps its files: the SQLite file's folder, else ``./moonshard-data``."""
    if database_url.partition(":")[0].lower() == "sqlite":
        return sqlite_path(database_url)[0].parent
    return _FALLBACK_DATA_FOLDER


def admin_token_path(database_url: str) -> Path:
    return data_folder(database_url) / ADMIN_TOKEN_FILE


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    known = {spec.name for spec in _SPECS}
    values: dict[str, object] = {}
    for key, value in document.items():
        name = key.upper()
        if name not in known:
            raise ConfigError(f"{path}: unknown setting {key!r} "
                              f"(known: {', '.join(sorted(n.lower() for n in known))})")
        values[name] = value
    return values


def _config_file(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    """The TOML file to read: ``--config``, else ``MOONSHARD_CONFIG``, else ``./moonshard.toml``
    when it exists."""
    named = flag or (Path(env[f"{_ENV_PREFIX}CONFIG"]) if env.get(f"{_ENV_PREFIX}CONFIG")
                     else None)
    if named is not None:
        if not named.is_file():
            raise ConfigError(f"config file {named} does not exist")
        return named
    default = Path(CONFIG_FILE)
    return default if default.is_file() else None


def _layered(
    flags: Mapping[str, object | None], env: Mapping[str, str], config: Path | None,
) -> tuple[dict[str, object], dict[str, str]]:
    """The raw value of each setting that has one, and which source gave it."""
    toml_values = _read_toml(config) if config is not None else {}
    raw: dict[str, object] = {}
    sources: dict[str, str] = {}
    for spec in _SPECS:
        flag = flags.get(spec.name)
        env_value = env.get(_ENV_PREFIX + spec.name)
        if flag is not None:
            raw[spec.name], sources[spec.name] = flag, f"--{spec.name.lower().replace('_', '-')}"
        elif env_value is not None:
            raw[spec.name], sources[spec.name] = env_value, _ENV_PREFIX + spec.name
        elif spec.name in toml_values:
            raw[spec.name], sources[spec.name] = toml_values[spec.name], \
                f"{config}: {spec.name.lower()}"
    return raw, sources


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration of ``moonshard serve``. Frozen: a change is a new value."""

    database_url: str = DEFAULT_DATABASE_URL
    topology: str = "process"
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    discord_token: str | None = None
    discord_api_url: str = "https://discord.com/api/v10"
    discord_intents: int | None = None  # None: moonshard.discord.intents.DEFAULT_INTENTS
    memory_limit: int = 25 * 1024 * 1024
    cpu_limit: float = 10.0
    ray_address: str | None = None
    stop_deadline: float = 30.0
    pattern_steps: int = 1_000_000_000
    log_lines: int = 1000
    log_days: float = 7.0
    # Which source gave each setting that did not come from its default (for the start-up
    # summary and error messages).
    sources: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))

    @classmethod
    def resolve(
        cls, flags: Mapping[str, object | None], env: Mapping[str, str], *,
        config: Path | None = None, default_topology: str = "process",
    ) -> Settings:
        """Layers ``flags`` (keyed by SERVICE.md's names), ``env``, the TOML file, defaults.

        Raises ``ConfigError`` naming the source of a bad value.
        """
        raw, sources = _layered(flags, env, _config_file(config, env))
        values: dict[str, Any] = {}
        for spec in _SPECS:
            if spec.name not in raw:
                continue
            try:
                values[spec.name.lower()] = spec.parse(raw[spec.name])
            except ValueError as error:
                shown = "" if spec.secret else f"={raw[spec.name]!r}"
                raise ConfigError(f"{sources[spec.name]}{shown}: {error}") from None
        values.setdefault("topology", default_topology)
        values.setdefault("workers", os.cpu_count() or 1)
        return cls(**values, sources=MappingProxyType(sources))

    @property
    def limits(self) -> Limits:
        return Limits(memory_bytes=self.memory_limit, cpu_seconds=self.cpu_limit,
                      pattern_steps=self.pattern_steps)

    @property
    def data_folder(self) -> Path:
        return data_folder(self.database_url)

    @property
    def admin_token_path(self) -> Path:
        return admin_token_path(self.database_url)

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")


@dataclasses.dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the CLI client finds the server, and the token it speaks with."""

    url: str
    token: str | None
    token_source: str

    @classmethod
    def resolve(
        cls, url: str | None, token: str | None, env: Mapping[str, str], *,
        config: Path | None = None,
    ) -> ClientSettings:
        """``url``/``token`` flags, then ``MOONSHARD_URL``/``MOONSHARD_TOKEN``, then the
        default URL and the admin token file of the local data folder."""
        try:
            resolved_url = _http_url(url or env.get(f"{_ENV_PREFIX}URL") or DEFAULT_URL)
        except ValueError as error:
            raise ConfigError(f"MOONSHARD_URL: {error}") from None
        if token:
            return cls(resolved_url, token, "--token")
        if env.get(f"{_ENV_PREFIX}TOKEN"):
            return cls(resolved_url, env[f"{_ENV_PREFIX}TOKEN"], "MOONSHARD_TOKEN")
        raw, _ = _layered({}, env, _config_file(config, env))
        database_url = str(raw.get("DATABASE_URL", DEFAULT_DATABASE_URL))
        try:
            path = admin_token_path(database_url)
        except ValueError:
            return cls(resolved_url, None, "no token (the DATABASE_URL is not valid)")
        try:
            return cls(resolved_url, path.read_text(encoding="utf-8").strip(), str(path))
        except OSError:
            return cls(resolved_url, None, f"no token ({path} cannot be read)")
