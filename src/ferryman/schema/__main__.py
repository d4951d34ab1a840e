"""``python -m ferryman.schema [--path]``: print the config's JSON Schema (or the shipped file's path)."""

from __future__ import annotations

import argparse
import sys

from ferryman.schema import SCHEMA_FILE, path, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferryman.schema",
        description=f"Print the JSON Schema of Ferryman's YAML config (regenerate src/ferryman/schema/{SCHEMA_FILE}).",
    )
    parser.add_argument("--path", action="store_true", help="print where the installed schema file is instead")
    args = parser.parse_args(argv)
    sys.stdout.write(f"{path()}\n" if args.path else render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
