"""Where the control API listens and how a client proves it may use it.

``control.listen`` is ``HOST:PORT`` on a loopback address or ``unix:/path``. On TCP every
request carries a bearer token: ``control.token`` when configured, else one the daemon
generates at start and writes to ``<state dir>/control.token`` (mode 0600), where
``ferryman trigger`` on the same machine, run by the same user or root, finds it. A Unix
socket is guarded by its file mode (0660) instead; a configured token is still required.

Kept free of aiohttp and httpx so that the command line imports it cheaply.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ferryman.config import FerrymanConfig
from ferryman.errors import ConfigError

__all__ = ["TOKEN_FILE", "Listen", "parse_listen", "read_token", "state_directory", "token_path", "write_token"]

TOKEN_FILE = "control.token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True, slots=True)
class Listen:
    """A parsed ``control.listen``: a loopback ``host`` and ``port``, or a Unix socket ``path``."""

    text: str
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def is_tcp(self) -> bool:
        return self.path is None

    @property
    def base_url(self) -> str:
        if self.path is not None:
            return "http://ferryman"  # the host is not used on a Unix socket
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


def parse_listen(text: str, *, file: str | None = None) -> Listen:
    """Read ``control.listen``; a non-loopback address is a config error (the API has no TLS)."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{text!r}: {problem}", file=file, path="control.listen")

    value = text.strip()
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise bad("give the socket's path: unix:/run/ferryman/control.sock")
        return Listen(text, path=Path(path).absolute())
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise bad("use 127.0.0.1:PORT, [::1]:PORT or unix:/path")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise bad(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise bad("the port must be between 1 and 65535")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise bad(f"{host!r} is not an IP address; use 127.0.0.1 or ::1") from None
    if not address.is_loopback:
        raise bad(
            "the control API listens on loopback only (127.0.0.1, ::1) or a Unix socket; "
            "put a reverse proxy in front of it to receive webhooks from elsewhere"
        )
    return Listen(text, host=str(address), port=port)


def state_directory(config: FerrymanConfig) -> Path:
    """The directory of the SQLite state file, else ``$STATE_DIRECTORY``, else ``./var``."""
    url = config.state.resolved_url()
    if url.startswith("sqlite") and "///" in url:
        path = url.split("///", 1)[1]
        if path and path != ":memory:":
            return Path(path).absolute().parent
    base = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(base or "./var").absolute()


def token_path(config: FerrymanConfig) -> Path:
    return state_directory(config) / TOKEN_FILE


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(path: Path, token: str | None = None) -> str:
    """Write ``token`` (a new one if not given) to ``path`` with mode 0600, atomically
    replacing any old one; returns it."""
    token = token or new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask or an old file said
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(path: Path) -> str:
    """The token in ``path``; OSError when it cannot be read."""
    return path.read_text(encoding="ascii").strip()
