"""One typed settings object, fed by the constructor, an INI file and the environment.

Precedence, lowest first: the :class:`~asyncapy.server.Server` constructor's
arguments, then the ``[AsyncAPY]`` section of the ``config=`` INI file, then
``ASYNCAPY_<KEY>`` environment variables (so a deployment can override what
the code says, as the seed's config file did). Every value is converted and
checked when the server is built; a bad value or an unknown key raises
:class:`ConfigError`, which names the key and where it came from. (An
``ASYNCAPY_*`` variable that names no setting is ignored: other tools share
the prefix.)
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from .errors import ConfigError
from .protocol import (
    DEFAULT_HEADER_SIZE,
    MAX_HEADER_SIZE,
    MIN_CONTENT_LENGTH,
    MIN_HEADER_SIZE,
    ByteOrder,
)

__all__ = ["ENV_PREFIX", "SECTION", "ConfigError", "Settings"]

SECTION: Final = "AsyncAPY"
ENV_PREFIX: Final = "ASYNCAPY_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a server, with its default.

    The seed's settings keep their names and defaults, except
    ``session_limit`` (0, no limit, in the seed: 256 here, so that one
    address cannot take every connection); the rest are new. All limits are
    documented in ``docs/configuration.md``, and the threats they answer in
    ``docs/threat-model.md``.
    """

    addr: str = "127.0.0.1"
    port: int = 8081
    buf: int = 1024
    logging_level: int = logging.INFO
    console_format: str = "[%(levelname)s] %(asctime)s %(message)s"
    datefmt: str = "%d/%m/%Y %H:%M:%S %p"
    timeout: float = 60.0
    header_size: int = DEFAULT_HEADER_SIZE
    byteorder: ByteOrder = "big"
    encoding: str = "json"
    session_limit: int = 256
    max_packet_size: int = 1024 * 1024  # protocol.md's 4 MiB costs up to 0.8 s to decode
    max_connections: int = 10_000
    max_pending: int = 64
    max_frames_per_read: int = 16
    max_buffered_bytes: int = 256 * 1024 * 1024
    write_buffer_size: int = 256 * 1024
    tls_handshake_timeout: float = 10.0
    close_timeout: float = 2.0
    shutdown_timeout: float = 10.0
    log_rate_limit: int = 10
    backlog: int = 1024
    certfile: str | None = None
    keyfile: str | None = None
    # -- logs (the library leaves the access log off; `asyncapy run` turns it on)
    access_log: bool = False
    log_format: str = "text"
    log_config: str | None = None
    # -- running: `Server.start()` and `asyncapy run`
    loop: str = "auto"
    # -- /metrics: the server's own, or under `asyncapy run` the supervisor's
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    # -- shared state: API keys, cluster sessions, rate limits (asyncapy.stores)
    store: str = "memory://"
    session_ttl: float = 10.0
    # -- behind a load balancer: the PROXY protocol (docs/deployment.md)
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ()
    proxy_header_timeout: float = 5.0
    # -- connection lifetime (gRPC's MAX_CONNECTION_AGE)
    max_connection_age: float | None = None
    max_connection_age_jitter: float = 0.1
    max_connection_age_grace: float | None = None
    # -- `asyncapy run` only: the worker supervisor
    graceful_timeout: float = 30.0
    workers: int = 1
    socket_mode: str = "reuseport"
    worker_healthcheck_timeout: float = 10.0

    @classmethod
    def load(
        cls,
        arguments: Mapping[str, Any],
        config: str | os.PathLike[str] | None = None,
        cfg_parser: configparser.ConfigParser | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from constructor arguments, an INI file and the environment.

        Args:
            arguments: typed values passed to the constructor.
            config: path of an INI file with an ``[AsyncAPY]`` section.
            cfg_parser: a ``ConfigParser`` to read it with (or one already
                holding an ``[AsyncAPY]`` section).
            environ: the environment (``os.environ`` by default); keys are
                ``ASYNCAPY_<NAME>``, for example ``ASYNCAPY_PORT=9000``.

        Raises:
            ConfigError: for an unknown key, a value of the wrong type or range,
                a missing file, or a file without an ``[AsyncAPY]`` section.
        """
        settings = cls()._apply(arguments, "argument", typed=True)
        if config is not None:
            values = _read_section(config, cfg_parser)
            settings = settings._apply(values, f"{os.fspath(config)} [{SECTION}]", typed=False)
        elif cfg_parser is not None and cfg_parser.has_section(SECTION):
            values = _section_values(cfg_parser)
            settings = settings._apply(values, f"cfg_parser [{SECTION}]", typed=False)
        settings = settings._apply_env(os.environ if environ is None else environ)
        settings._check_combination()
        return settings

    def override(
        self,
        options: Mapping[str, Any],
        config: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """These settings, then an INI file, the environment and command-line options on top.

        This is how ``asyncapy run`` completes the settings a ``Server`` was
        built with: the precedence, lowest first, is constructor arguments,
        INI file, environment, command line.

        Args:
            options: values from the command line (or any caller), as text or
                already typed: each is converted as an INI value would be.
            config: path of an INI file with an ``[AsyncAPY]`` section.
            environ: the environment (``os.environ`` by default).

        Raises:
            ConfigError: as :meth:`load`, naming the option, file or variable.
        """
        settings = self
        if config is not None:
            values = _read_section(config)
            settings = settings._apply(values, f"{os.fspath(config)} [{SECTION}]", typed=False)
        settings = settings._apply_env(os.environ if environ is None else environ)
        settings = settings._apply(options, "command line", typed=False)
        settings._check_combination()
        return settings

    def _apply_env(self, env: Mapping[str, str]) -> Settings:
        # Only the variables that name a setting: tools share the prefix
        # (ASYNCAPY_TEST_PYTHONS, ASYNCAPY_SOAK_SECONDS...), and a server must
        # not refuse to start because of a variable meant for something else.
        from_env = {
            name: value
            for key, value in env.items()
            if key.startswith(ENV_PREFIX) and (name := key[len(ENV_PREFIX) :].lower()) in _RULES
        }
        return self._apply(from_env, "environment ASYNCAPY_*", typed=False) if from_env else self

    def _apply(self, values: Mapping[str, Any], where: str, *, typed: bool) -> Settings:
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            rule = _RULES.get(key)
            if rule is None:
                known = ", ".join(sorted(_RULES))
                raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
            try:
                changes[key] = rule(raw, typed)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: {key} = {raw!r}: {exc}") from None
        return replace(self, **changes)

    def _check_combination(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("keyfile is set without certfile")
        if self.metrics_port is not None and self.metrics_port == self.port != 0:
            raise ConfigError(f"metrics_port and port are both {self.port}")
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigError(
                "proxy_protocol is on but trusted_proxies is empty: every connection would be"
                " refused (name the load balancers' addresses or networks)"
            )
        # A max_packet_size larger than the header can express is harmless:
        # the header itself is then the limit (65,535 for header_size=2).


def _read_section(
    config: str | os.PathLike[str], parser: configparser.ConfigParser | None = None
) -> dict[str, str]:
    """The ``[AsyncAPY]`` values of the INI file ``config``.

    Raises:
        ConfigError: for a missing or unparsable file, or one without the section.
    """
    where = os.fspath(config)
    parser = parser if parser is not None else configparser.ConfigParser()
    if not Path(where).is_file():
        raise ConfigError(f"config file {where!r} does not exist")
    try:
        parser.read(where, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {where!r} cannot be parsed: {exc}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"config file {where!r} has no [{SECTION}] section")
    return _section_values(parser)


def _section_values(parser: configparser.ConfigParser) -> dict[str, str]:
    # [DEFAULT] values apply, as configparser means them to; a key we do not
    # know is an error when [AsyncAPY] sets it (to its own value).
    shared = parser.defaults()
    return {
        key: value
        for key in parser.options(SECTION)
        if (value := parser.get(SECTION, key, raw=True)) is not None
        and (key in _RULES or shared.get(key) != value)
    }


# -- conversion rules: (raw value, typed?) -> value, raising ValueError/TypeError


def _integer(low: int, high: int | None = None) -> Callable[[Any, bool], int]:
    def rule(raw: Any, typed: bool) -> int:
        if typed:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise TypeError(f"expected an integer, got {type(raw).__name__}")
            value = raw
        else:
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise ValueError("expected an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}")
        return value

    return rule


def _number(low: float, *, above: bool) -> Callable[[Any, bool], float]:
    def rule(raw: Any, typed: bool) -> float:
        if typed:
            if not isinstance(raw, (int, float)) or isinstance(raw, bool):
                raise TypeError(f"expected a number of seconds, got {type(raw).__name__}")
            value = float(raw)
        else:
            try:
                value = float(str(raw).strip())
            except ValueError:
                raise ValueError("expected a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be finite")
        if value < low or (above and value == low):
            raise ValueError(f"must be {'>' if above else '>='} {low}")
        return value

    return rule


def _text(raw: Any, typed: bool) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"expected a string, got {type(raw).__name__}")
    return raw


def _optional_path(raw: Any, typed: bool) -> str | None:
    if raw is None or (not typed and str(raw).strip() == ""):
        return None
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        raise TypeError(f"expected a file path, got {type(raw).__name__}")
    return raw


def _choice(*options: str) -> Callable[[Any, bool], str]:
    def rule(raw: Any, typed: bool) -> str:
        value = _text(raw, typed).strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(map(repr, options))}")
        return value

    return rule


def _boolean(raw: Any, typed: bool) -> bool:
    if typed:
        if not isinstance(raw, bool):
            raise TypeError(f"expected True or False, got {type(raw).__name__}")
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _optional_port(raw: Any, typed: bool) -> int | None:
    if raw is None or (not typed and str(raw).strip().lower() in ("", "none", "off")):
        return None
    return _integer(0, 65535)(raw, typed)


def _optional_seconds(raw: Any, typed: bool) -> float | None:
    if raw is None or (not typed and str(raw).strip().lower() in ("", "none", "off")):
        return None
    return _number(0.0, above=True)(raw, typed)


def _optional_grace(raw: Any, typed: bool) -> float | None:
    if raw is None or (not typed and str(raw).strip().lower() in ("", "none")):
        return None
    return _number(0.0, above=False)(raw, typed)


def _fraction(raw: Any, typed: bool) -> float:
    value = _number(0.0, above=False)(raw, typed)
    if value >= 1.0:
        raise ValueError("must be >= 0 and < 1 (a fraction of max_connection_age)")
    return value


_STORE_SCHEMES: Final = ("memory", "sqlite", "redis", "rediss")


def _store_url(raw: Any, typed: bool) -> str:
    value = _text(raw, typed).strip()
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in _STORE_SCHEMES:
        raise ValueError(
            "expected a store URL: memory://, sqlite:///path.db or redis://host:port/db"
        )
    return value


def _networks(raw: Any, typed: bool) -> tuple[str, ...]:
    """Addresses or CIDR networks, as a sequence or one comma/space separated string."""
    if isinstance(raw, str):
        items: list[Any] = [item for item in re.split(r"[\s,]+", raw) if item]
    elif isinstance(raw, (list, tuple, set, frozenset)):
        items = list(raw)
    else:
        raise TypeError(f"expected addresses or networks, got {type(raw).__name__}")
    networks: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected an address or network as a string, got {item!r}")
        try:
            network = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or network: {exc}") from None
        if str(network) not in networks:
            networks.append(str(network))
    return tuple(networks)


def _log_level(raw: Any, typed: bool) -> int:
    if isinstance(raw, str):
        name = raw.strip().upper()
        level = logging.getLevelName(name)
        if isinstance(level, int):
            return level
        try:
            return _integer(0, 50)(raw, False)
        except ValueError:
            raise ValueError("expected a level name (DEBUG, INFO...) or 0 to 50") from None
    return _integer(0, 50)(raw, True)


_RULES: Final[dict[str, Callable[[Any, bool], Any]]] = {
    "addr": _text,
    "port": _integer(0, 65535),
    "buf": _integer(1),
    "logging_level": _log_level,
    "console_format": _text,
    "datefmt": _text,
    "timeout": _number(0.0, above=True),
    "header_size": _integer(MIN_HEADER_SIZE, MAX_HEADER_SIZE),
    "byteorder": _choice("big", "little"),
    "encoding": _choice("json", "ziproto"),
    "session_limit": _integer(0),
    "max_packet_size": _integer(MIN_CONTENT_LENGTH),
    "max_connections": _integer(0),
    "max_pending": _integer(1),
    "max_frames_per_read": _integer(1),
    "max_buffered_bytes": _integer(0),
    "write_buffer_size": _integer(1024),
    "tls_handshake_timeout": _number(0.0, above=True),
    "close_timeout": _number(0.0, above=True),
    "shutdown_timeout": _number(0.0, above=False),
    "log_rate_limit": _integer(0),
    "backlog": _integer(1),
    "certfile": _optional_path,
    "keyfile": _optional_path,
    "access_log": _boolean,
    "log_format": _choice("text", "json"),
    "log_config": _optional_path,
    "loop": _choice("auto", "asyncio", "uvloop"),
    "graceful_timeout": _number(0.0, above=True),
    "workers": _integer(1, 1024),
    "socket_mode": _choice("reuseport", "shared"),
    "worker_healthcheck_timeout": _number(0.0, above=True),
    "metrics_port": _optional_port,
    "metrics_addr": _text,
    "store": _store_url,
    "session_ttl": _number(0.0, above=True),
    "proxy_protocol": _boolean,
    "trusted_proxies": _networks,
    "proxy_header_timeout": _number(0.0, above=True),
    "max_connection_age": _optional_seconds,
    "max_connection_age_jitter": _fraction,
    "max_connection_age_grace": _optional_grace,
}

assert set(_RULES) == {f.name for f in fields(Settings)}
