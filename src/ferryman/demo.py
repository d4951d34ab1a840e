"""``make demo``: the main job end to end on built-in data, no account or server needed.

It writes a config to ``./demo-output/ferryman.yaml``, syncs a helpdesk export (with two
deliberately broken rows) to a CSV target, runs again to show that an incremental run
skips what already arrived, and prints where everything is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

OUT = Path("demo-output")


def _ferryman(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ferryman", "--config", str(OUT / "ferryman.yaml"), "--log-level", "warning", *args]
    print(f"\n$ ferryman {' '.join(args)}", flush=True)
    result = subprocess.run(cmd, text=True, capture_output=True, check=False)
    sys.stdout.write(result.stdout)
    if result.returncode not in (0,):
        sys.stdout.write(result.stderr)
    return result


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    inbox = OUT / "inbox"
    inbox.mkdir(parents=True)
    sample = resources.files("ferryman") / "demo_data" / "tickets.csv"
    (inbox / "tickets.csv").write_bytes(sample.read_bytes())
    config = {
        "state": {"url": f"sqlite:///{(OUT / 'state.db').resolve()}"},
        "log": {"format": "console", "level": "warning"},
        "systems": {
            "helpdesk_export": {"connector": "csv", "directory": str(inbox.resolve())},
            "exports": {"connector": "csv", "directory": str((OUT / "exports").resolve())},
        },
        "pipelines": {
            "tickets-to-csv": {"from": "helpdesk_export.tickets", "to": "exports.tickets", "page_size": 50},
        },
    }
    (OUT / "ferryman.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"Ferryman demo: config written to {OUT / 'ferryman.yaml'}")

    steps = [
        _ferryman("check"),
        _ferryman("sync", "tickets-to-csv", "--no-progress"),
        _ferryman("sync", "tickets-to-csv", "--no-progress"),
        _ferryman("dlq", "list"),
        _ferryman("status"),
    ]
    failed = [s for s in steps if s.returncode != 0]
    target = OUT / "exports" / "tickets.csv"
    rows = max(0, len(target.read_text().splitlines()) - 1) if target.exists() else 0
    print("\nSummary")
    print(f"  synced records:   {rows} rows in {target}")
    print("  broken rows:      kept as dead letters with line numbers (ferryman dlq list)")
    print(f"  state database:   {OUT / 'state.db'}")
    print(f"  try yourself:     .venv/bin/ferryman --config {OUT / 'ferryman.yaml'} status")
    if failed or rows == 0:
        print("demo FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
