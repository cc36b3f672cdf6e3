"""API keys: where they come from, how a request's key is checked, and the id that stands for a key.

Keys come from ``--api-key`` and ``--api-key-file`` (re-read on SIGHUP without dropping traffic: the set of key
digests is swapped in one assignment). A presented key is hashed and compared with every known digest in constant
time, so neither the comparison nor the lookup tells an attacker how close a guess was. Only the key id, a short
stable hash, ever reaches logs, traces or metrics. A key in the file may carry a default priority lane for its
requests (``<key> priority=low``; see :mod:`embedserve.http.priority`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from embedserve.core.priority import Priority
from embedserve.errors import UnauthorizedError
from embedserve.settings import EdgeSettings, SettingsError

log = logging.getLogger("embedserve.keys")

ANONYMOUS = "-"
"""Key id recorded when auth is off."""


def key_id(key: str) -> str:
    """A short stable id for a key: the first 12 hex digits of its SHA-256. Safe to log."""
    return _digest(key).hex()[:12]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_key_file(path: str) -> list[tuple[str, Priority | None]]:
    """One key per line, optionally followed by ``priority=<lane>`` (its requests' default lane); blank lines and
    lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"--api-key-file {path}: {exc.strerror or exc}") from exc
    keys: list[tuple[str, Priority | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, *options = line.split()
        lane: Priority | None = None
        for option in options:
            name, _, value = option.partition("=")
            if name != "priority" or value.lower() not in LANE_NAMES:
                raise SettingsError(
                    f"--api-key-file {path}, line {number}: after the key, only priority=high, priority=normal or "
                    "priority=low may follow (the key itself is not shown)"
                )
            lane = Priority(value.lower())
        keys.append((key, lane))
    return keys


LANE_NAMES = frozenset(lane.value for lane in Priority)


class ApiKeys:
    """The accepted keys. With none configured, every request is allowed."""

    def __init__(self, settings: EdgeSettings) -> None:
        self._flag_keys = list(settings.api_key)
        self._file = settings.api_key_file
        self._digests: dict[bytes, str] = {}
        self._lanes: dict[str, Priority] = {}
        self.reload()

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key."""
        return bool(self._digests)

    def reload(self) -> int:
        """Re-read the key file (SIGHUP). The new set replaces the old one atomically. Returns the key count."""
        keys: list[tuple[str, Priority | None]] = [(key, None) for key in self._flag_keys]
        if self._file is not None:
            from_file = read_key_file(self._file)
            if not from_file:
                raise SettingsError(f"--api-key-file {self._file} holds no keys")
            keys.extend(from_file)
        self._lanes = {key_id(key): lane for key, lane in keys if lane is not None}
        self._digests = {_digest(key): key_id(key) for key, _ in keys}
        log.info("API keys loaded: %d (ids %s)", len(self._digests), ", ".join(sorted(self._digests.values())))
        return len(self._digests)

    def priority(self, kid: str) -> Priority | None:
        """The default lane the key file gives key ``kid``, if any."""
        return self._lanes.get(kid)

    def authenticate(self, authorization: str | None) -> str:
        """The key id for an ``Authorization`` header value; raises UnauthorizedError when auth is on and the header
        is missing, malformed, or holds an unknown key."""
        digests = self._digests
        if not digests:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError(
                "missing API key: send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"}
            )
        presented = _digest(token)
        found: str | None = None
        for digest, kid in digests.items():  # every digest is compared: the time does not depend on which matched
            if hmac.compare_digest(presented, digest):
                found = kid
        if found is None:
            raise UnauthorizedError("invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found


GATEWAY_TOKEN_HEADER = "x-embedserve-gateway-token"
"""The header a fleet's gateway sends its shared token in, and its workers check."""


def read_gateway_token(path: str, flag: str = "--gateway-token-file") -> str:
    """The shared gateway token: the file's first non-blank line."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: {exc.strerror or exc}") from exc
    if not lines:
        raise SettingsError(f"{flag} {path} is empty; put the shared token on its first line")
    return lines[0]


class GatewayToken:
    """A worker's check that a request came through the fleet's gateway (``--gateway-token-file`` or
    ``EMBEDSERVE_GATEWAY_TOKEN``). Unset, every request passes."""

    def __init__(self, settings: EdgeSettings) -> None:
        token = settings.gateway_token
        if settings.gateway_token_file is not None:
            token = read_gateway_token(settings.gateway_token_file)
        self._digest = None if token is None else _digest(token)

    @property
    def enabled(self) -> bool:
        """True when requests must carry the gateway token."""
        return self._digest is not None

    def check(self, presented: str | None) -> None:
        """Raise UnauthorizedError unless ``presented`` is the token. Digests of equal length are compared in
        constant time, so the time taken says nothing about how much of a guess was right."""
        if self._digest is None:
            return
        if presented is None or not hmac.compare_digest(_digest(presented), self._digest):
            raise UnauthorizedError(
                f"this worker only accepts calls from its fleet's gateway (missing or wrong {GATEWAY_TOKEN_HEADER})"
            )
