"""Discovery of connectors and sandbox simulators through entry points.

Built-in ones come through the same groups a third-party package uses. A plugin that
fails to import is reported, not fatal, so one broken package cannot take the daemon down.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

CONNECTOR_GROUP = "ferryman.connectors"
SIMULATOR_GROUP = "ferryman.simulators"


@dataclass(frozen=True)
class Plugin:
    name: str
    entry_point: EntryPoint
    obj: Any = None
    error: str | None = None


def _plugin(ep: EntryPoint) -> Plugin:
    try:
        return Plugin(ep.name, ep, ep.load())
    except Exception as exc:  # a broken third-party plugin must not stop the rest
        return Plugin(ep.name, ep, None, f"{type(exc).__name__}: {exc}")


def _load(group: str) -> dict[str, Plugin]:
    found: dict[str, Plugin] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        found[ep.name] = _plugin(ep)
    return found


@cache
def _one_connector(kind: str) -> Plugin | None:
    """Only the connector asked for: importing every installed one costs a command's start-up."""
    chosen = None
    for ep in entry_points(group=CONNECTOR_GROUP, name=kind):
        chosen = ep  # as in _load, the last one of a name wins
    return _plugin(chosen) if chosen is not None else None


@cache
def connectors() -> dict[str, Plugin]:
    """Every installed connector class by its config name."""
    return _load(CONNECTOR_GROUP)


@cache
def simulators() -> dict[str, Plugin]:
    """Every installed sandbox simulator class by system name."""
    return _load(SIMULATOR_GROUP)


def connector_class(kind: str) -> Any:
    """The connector class for ``connector: KIND``; raises ``KeyError`` with a clear message."""
    # once every connector is loaded (``ferryman connectors``, tests adding one), use that list
    plugin = connectors().get(kind) if connectors.cache_info().currsize else _one_connector(kind)
    if plugin is None:
        found = connectors()
        known = ", ".join(sorted(n for n, p in found.items() if p.obj is not None))
        raise KeyError(f"unknown connector {kind!r}; installed: {known or 'none'}")
    if plugin.obj is None:
        raise KeyError(f"connector {kind!r} is installed but failed to load: {plugin.error}")
    return plugin.obj


def simulator_class(kind: str) -> Any:
    found = simulators()
    plugin = found.get(kind)
    if plugin is None or plugin.obj is None:
        known = ", ".join(sorted(n for n, p in found.items() if p.obj is not None))
        why = plugin.error if plugin else f"unknown sandbox {kind!r}"
        raise KeyError(f"{why}; available: {known or 'none'}")
    return plugin.obj
