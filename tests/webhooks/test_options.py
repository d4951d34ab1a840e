"""Configuration of webhook systems: what is refused, and how it says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferryman.config import load_config
from ferryman.errors import ConfigError
from ferryman.webhooks.options import DEFAULT_RETRY_SCHEDULE
from tests.webhooks.support import ENV, SECRET, write_config


def load(tmp_path: Path, hooks: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    path = write_config(tmp_path, {"systems": {"hooks": {"connector": "webhook", **hooks}}})
    return load_config(path, environ=env if env is not None else ENV)


def test_defaults_follow_the_spec_schedule(tmp_path: Path) -> None:
    config = load(tmp_path, {"url": "https://receiver.example.com/x", "secret": "${HOOK_SECRET}"})
    options = config.system_options("hooks")
    assert options.retry_schedule == list(DEFAULT_RETRY_SCHEDULE)
    assert [d.total_seconds() for d in options.retry_schedule] == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert options.timeout.total_seconds() == 15 and set(options.streams) == {
        "tickets",
        "contacts",
        "organisations",
        "invoices",
    }


@pytest.mark.parametrize(
    ("hooks", "path", "problem"),
    [
        ({"url": "https://r.example.com", "secret": SECRET}, "systems.hooks.secret", "references, not literals"),
        ({"url": "https://r.example.com", "secret": "${NOT_A_KEY}"}, "systems.hooks.secret", "not a webhook secret"),
        ({"url": "https://r.example.com", "secret": "${HOOK_SECRET}", "intake": True}, "systems.hooks", "exactly one"),
        ({"secret": "${HOOK_SECRET}"}, "systems.hooks", "exactly one"),
        (
            {"url": "http://r.example.com/x?token=abc", "secret": "${HOOK_SECRET}"},
            "systems.hooks",
            "refusing plain http",
        ),
        (
            {"url": "https://r.example.com", "secret": "${HOOK_SECRET}", "retry_schedule": []},
            "systems.hooks.retry_schedule",
            "at least one",
        ),
        (
            {"url": "https://r.example.com", "secret": "${HOOK_SECRET}", "streams": ["tickets", "bugs"]},
            "systems.hooks.streams",
            "unknown stream",
        ),
        ({"secret": "${HOOK_SECRET}", "intake": {"dedupe_window": "24h"}}, "systems.hooks.intake.dedupe_window", "72h"),
        ({"secret": "${HOOK_SECRET}", "intake": {"streams": {"bugs": {}}}}, "systems.hooks", "needs a 'kind'"),
    ],
)
def test_bad_webhook_options_name_the_key(tmp_path: Path, hooks: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, hooks, {**ENV, "NOT_A_KEY": "plain-text-password"})
    assert caught.value.path == path and problem in caught.value.problem
    assert "plain-text-password" not in str(caught.value) and "abc" not in str(caught.value)


def test_schedules_take_durations_and_streams_take_kinds(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "url": "http://127.0.0.1:9000/hook",
            "secret": "${HOOK_SECRET}",
            "retry_schedule": [0, "1.5s", "2m", 30],
            "streams": {"cases": "ticket"},
        },
    )
    options = config.system_options("hooks")
    assert [d.total_seconds() for d in options.retry_schedule] == [0, 1.5, 120, 30]
    assert options.stream_kinds() == {"cases": "ticket"}
