"""A client of the running daemon's control API, for ``ferryman trigger``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ferryman.config import FerrymanConfig

from ._listen import Listen, parse_listen, read_token, token_path

__all__ = ["ControlClient", "DaemonUnreachable"]


class DaemonUnreachable(Exception):
    """No daemon answers, or it cannot be asked (no token); ``str()`` says what to do."""


class ControlClient:
    """Talks to ``control.listen`` with the daemon's token."""

    def __init__(self, listen: Listen, token: str | None, *, timeout: float | None = None) -> None:
        self.listen = listen
        transport = httpx.HTTPTransport(uds=str(listen.path)) if listen.path is not None else httpx.HTTPTransport()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=listen.base_url,
            transport=transport,
            headers=headers,
            # the daemon is local: never through an HTTP proxy from the environment
            trust_env=False,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    @classmethod
    def for_config(cls, config: FerrymanConfig, *, timeout: float | None = None) -> ControlClient:
        listen = parse_listen(config.control.listen, file=config.file)
        token: str | None = None
        if config.control.token is not None:
            token = config.control.token.get_secret_value()
        elif listen.is_tcp:
            token = _file_token(token_path(config), listen)
        return cls(listen, token, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
            raise DaemonUnreachable(
                f"no daemon answers on {self.listen} ({exc or type(exc).__name__}); "
                "start it with `ferryman run` or `systemctl start ferryman`"
            ) from None

    def close(self) -> None:
        self._http.close()


def _file_token(path: Path, listen: Listen) -> str:
    try:
        return read_token(path)
    except FileNotFoundError:
        raise DaemonUnreachable(
            f"no control token at {path}: the daemon writes it when it starts, so none seems to run "
            f"with this config (control API {listen})"
        ) from None
    except PermissionError:
        raise DaemonUnreachable(
            f"cannot read the control token {path} (permission denied): run this as root or as the "
            "daemon's user, or configure control.token"
        ) from None
    except OSError as exc:
        raise DaemonUnreachable(f"cannot read the control token {path}: {exc.strerror}") from None
