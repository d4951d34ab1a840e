"""The recorded responses kept in tests/fixtures/recorded are the project's shared ones.

The copy lets a fresh clone test without anything beside it; where the project's
``shared/fixtures`` is beside the repository (the team's machines, CI), the two must hold
the same files, byte for byte, so a fixture added or corrected there is not missed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import RECORDED

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared/fixtures beside the repository (a fresh clone)")
def test_the_copy_holds_exactly_the_shared_recorded_responses() -> None:
    assert _files(RECORDED) == _files(SHARED)


def test_every_recorded_response_keeps_its_licence_and_provenance() -> None:
    assert (RECORDED / "README.md").is_file()
    licences = {p.name for p in (RECORDED / "LICENSES").iterdir()}
    assert licences == {"cerb-api-client-MIT.txt", "clevertim-api-py-BSD-3-Clause.txt", "harvested-MIT.txt"}
