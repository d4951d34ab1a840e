"""What the end-to-end CLI tests share: a ``ferryman sandbox`` process, the
config file ``ferryman sync`` reads, and the rows of the CSV files it writes."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ferryman_cmd

STARTUP_SECONDS = 30.0
STOP_SECONDS = 15.0
SANDBOX_URL = re.compile(r"http://127\.0\.0\.1:\d+")


@contextlib.contextmanager
def sandbox_process(system: str, *args: str, port: int = 0, expect: str | None = None) -> Iterator[str]:
    """``ferryman sandbox SYSTEM --port PORT ARGS`` as a process until the block ends; yields its URL.

    Waits up to 30 s for the start-up line and checks that it says ``SYSTEM sandbox on URL``
    with a loopback URL on ``port`` (on the port the OS chose when ``port`` is 0) and, when
    ``expect`` is given, that it contains ``expect`` too (a credential, a rate limit). A failed
    check stops the sandbox and reports the line with the sandbox's stderr. The process is
    terminated when the block ends, however it ends.
    """
    process = subprocess.Popen(
        [*ferryman_cmd(), "sandbox", system, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(STARTUP_SECONDS):
                raise AssertionError(
                    f"the {system} sandbox printed no start-up line within {STARTUP_SECONDS:g} s; "
                    f"stderr: {_stop(process)}"
                )
        line = process.stdout.readline()
        match = SANDBOX_URL.search(line)
        url = match[0] if match else ""
        if not (
            match
            and f"{system} sandbox on {url}" in line
            and (port == 0 or url == f"http://127.0.0.1:{port}")
            and (expect is None or expect in line)
        ):
            wanted = f"{system} sandbox on http://127.0.0.1:{port or 'PORT'}" + (f" and {expect!r}" if expect else "")
            raise AssertionError(f"start-up line without {wanted}: {line!r}; stderr: {_stop(process)}")
        yield url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[str]) -> str:
    """Terminate the sandbox unless it has ended already; returns what it wrote to stderr."""
    if process.poll() is None:
        process.terminate()
    try:
        _out, err = process.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return err or ""


def save_config(directory: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as ``DIRECTORY/ferryman.yaml``; returns the path (for ``--config``)."""
    path = directory / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (as the csv connector writes them: UTF-8, header first) as dicts."""
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def sync_killed_after(config: Path, pipeline: str, env: dict[str, str], count: Callable[[], int], writes: int) -> bool:
    """Start ``ferryman sync PIPELINE`` and SIGKILL it once ``count()`` (rows in the app)
    has grown by ``writes``: mid-page, mid-write. ``False`` when the sync finished first."""
    process = subprocess.Popen(
        [*ferryman_cmd(), "--config", str(config), "sync", pipeline, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    start = count()
    deadline = time.monotonic() + 60
    while process.poll() is None and count() < start + writes and time.monotonic() < deadline:
        time.sleep(0.002)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True
