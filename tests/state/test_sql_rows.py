"""The state store's page-sized statements (ferryman.state.sql): a page's rows inserted in
one multi-row statement on SQLite (chunked under its variable limit), and read back as one
JSON value; both give exactly what row-by-row statements give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ferryman.state import Link, PageCommit, StateStore, sql
from ferryman.state.links import Links


def _links(n: int) -> list[Link]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    odd = ["plain", 'quo"te', "back\\slash", "ünï©ødé", "tab\there", "emoji 🚀", "", "'single'"]
    return [
        Link(
            f"k{i}-{odd[i % len(odd)]}",
            f"d{i}",
            f"2:{i:032x}",
            None if i % 3 else f"2:{i + 1:032x}",
            i % 5,
            None if i % 2 else start + timedelta(seconds=i),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("keyed", [False, True])
def test_a_page_written_in_chunks_reads_back_exactly(
    tmp_path: Path, state_url: str, keyed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore.open(state_url)
    if keyed:
        store.keyed_target("a.t", "b.t")
    monkeypatch.setattr(sql, "SQLITE_VARIABLES", 40)  # 4 link rows or 10 fingerprint rows a statement
    links = _links(57)
    if keyed:
        links = [Link(x.src_key, x.src_key, x.src_fp, x.src_fp) for x in links]
    store.commit_page(PageCommit("p", links={("a.t", "b.t"): links}))
    got = store.links_for("a.t", "b.t", [x.src_key for x in links] + ["missing"])
    want = {x.src_key: x for x in links}
    if not keyed:
        assert {k: (v.dst_key, v.src_fp, v.dst_fp, v.write_count, v.window_start) for k, v in got.items()} == {
            k: (v.dst_key, v.src_fp, v.dst_fp, v.write_count, v.window_start) for k, v in want.items()
        }
    else:
        assert {k: v.src_fp for k, v in got.items()} == {k: v.src_fp for k, v in want.items()}
    # the same read, row by row, agrees with the JSON one
    if store.dialect == "sqlite":
        monkeypatch.setitem(sql._JSON_ROWS, "ok", False)
        assert store.links_for("a.t", "b.t", list(want)) == got
    store.close()


def test_upserts_in_one_statement_update_what_is_there(state_url: str) -> None:
    store = StateStore.open(state_url)
    first = _links(10)
    store.commit_page(PageCommit("p", links={("a.t", "b.t"): first}))
    again = [Link(x.src_key, "new-" + x.dst_key, "2:changed", None, 9, None) for x in first[:5]]
    store.commit_page(PageCommit("p", links={("a.t", "b.t"): again}))
    got = store.links_for("a.t", "b.t", [x.src_key for x in first])
    assert [got[x.src_key].dst_key for x in first] == [f"new-d{i}" for i in range(5)] + [f"d{i}" for i in range(5, 10)]
    assert store.count_links("a.t", "b.t") == 10
    assert isinstance(store.links, Links)
    store.close()
