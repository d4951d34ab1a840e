"""What Ferryman prints for a person: numbers, times, colour and NO_COLOR, JSON, a reader
that leaves, and the progress bar with log lines above it."""

from __future__ import annotations

import io
import json
import os
import re
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from ferryman import logs, terminal

NOW = datetime(2026, 12, 6, 5, 14, 3, 512345, tzinfo=UTC)
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
#: what a colour (SGR) escape looks like; erase and cursor moves are other letters
SGR = re.compile(r"\x1b\[[0-9;]*m")


def render_screen(raw: str) -> list[str]:
    """The screen a terminal shows after ``raw``: carriage returns, newlines, cursor up and
    down, erase in line; colours dropped. Enough for tqdm's and structlog's output."""
    screen: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            match = _CSI.match(raw, i)
            if match is None:
                i += 1
                continue
            params, command = match.groups()
            n = int(params) if params.isdigit() else None
            if command == "A":
                row = max(0, row - (n or 1))
            elif command == "B":
                row += n or 1
            elif command == "G":
                col = (n or 1) - 1
            elif command == "K":
                while len(screen) <= row:
                    screen.append([])
                line = screen[row]
                if n in (None, 0):
                    del line[col:]
                elif n == 1:
                    line[: col + 1] = [" "] * min(col + 1, len(line))
                else:
                    line.clear()
            i = match.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " ":
            while len(screen) <= row:
                screen.append([])
            line = screen[row]
            if len(line) < col:
                line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    lines = ["".join(line).rstrip() for line in screen]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# -- numbers, times, durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (999, "999"), (100_000, "100,000"), (12_345_678, "12,345,678"), (3.25, "3.2"), (17241.4, "17,241")],
)
def test_numbers_have_thousands_separators_and_never_an_exponent(value: float, text: str) -> None:
    assert terminal.number(value) == text
    assert "e+" not in terminal.number(value)


def test_a_rate_is_records_a_second_and_none_before_time_has_passed() -> None:
    assert terminal.per_second(100_000, 4.0) == "25,000 records/s"
    assert terminal.per_second(7, 2.0) == "3.5 records/s"
    assert terminal.per_second(5, 0.0) is None


def test_times_are_utc_to_the_second_with_how_long_ago() -> None:
    berlin = timedelta(hours=1)
    local = (NOW - timedelta(minutes=4)).astimezone(__import__("datetime").timezone(berlin))
    assert terminal.clock(local) == "2026-12-06 05:10:03Z"
    assert terminal.when(NOW - timedelta(minutes=4, seconds=10), NOW) == "2026-12-06 05:09:53Z (4 min ago)"
    assert terminal.relative(NOW + timedelta(minutes=5, seconds=57), NOW) == "in 5 min"
    assert terminal.relative(NOW - timedelta(seconds=12), NOW) == "12 s ago"
    assert terminal.relative(NOW - timedelta(hours=3, minutes=5), NOW) == "3 h 5 min ago"
    assert terminal.relative(NOW - timedelta(days=2, hours=4), NOW) == "2 days 4 h ago"
    assert terminal.relative(NOW, NOW) == "just now"
    with pytest.raises(ValueError, match="naive datetime 2026-12-06T05:14:03"):
        terminal.clock(NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.29, "0.3s"), (12.46, "12.5s"), (245, "4m 05s"), (3720, "1h 02m"), (2 * 86400 + 3 * 3600, "2d 03h")],
)
def test_durations_in_the_two_largest_units(seconds: float, text: str) -> None:
    assert terminal.duration(seconds) == text


# -- colour ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "tty", "coloured"),
    [
        ({}, True, True),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": "anything"}, True, False),
        ({"NO_COLOR": ""}, True, True),  # no-color.org: set *and not empty*
        ({"TERM": "dumb"}, True, False),
        ({}, False, False),
    ],
)
def test_colour_on_a_terminal_unless_no_color(env: dict[str, str], tty: bool, coloured: bool) -> None:
    stream = FakeTerminal() if tty else io.StringIO()
    style = terminal.Style.for_stream(stream, env)
    assert style.colour is coloured
    painted = style.outcome("failed")
    assert bool(SGR.search(painted)) is coloured
    assert SGR.sub("", painted) == "failed"


def test_a_run_summary_groups_digits_and_gives_the_rate_for_a_person_and_stays_greppable_for_a_script() -> None:
    counts = {"read": 100_000, "created": 99_000, "updated": 1_000, "deleted": 0, "skipped": 0, "withheld": 0}
    counts["dead_lettered"] = 0
    person = terminal.run_summary("t2c", "ok", counts, 4.0, style=terminal.Style(colour=True), grouped=True)
    plain = SGR.sub("", person)
    assert plain == (
        "t2c: ok (read 100,000, created 99,000, updated 1,000, deleted 0, skipped 0, dead_lettered 0) "
        "in 4.0s, 25,000 records/s"
    )
    assert SGR.search(person), "colour on a terminal"
    script = terminal.run_summary("t2c", "failed", {**counts, "withheld": 3}, 4.0, "boom")
    assert script == (
        "t2c: failed (read 100000, created 99000, updated 1000, deleted 0, skipped 0, withheld 3, dead_lettered 0) "
        "in 4.0s, 25000 records/s: boom"
    )
    assert "e+" not in person + script


# -- JSON --------------------------------------------------------------------------------------


def test_json_has_null_and_z_times() -> None:
    doc = json.loads(
        terminal.to_json(
            {
                "aware": NOW,
                "naive_utc": NOW.replace(tzinfo=None),
                "missing": None,
                "took": timedelta(seconds=90),
                "sides": {"b", "a"},
            }
        )
    )
    assert doc == {
        "aware": "2026-12-06T05:14:03.512345Z",
        "naive_utc": "2026-12-06T05:14:03.512345Z",
        "missing": None,
        "took": 90.0,
        "sides": ["a", "b"],
    }


# -- a reader that leaves ----------------------------------------------------------------------


def test_output_stops_quietly_when_its_reader_leaves() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        out = terminal.Output(stream)
        assert out.line("first") is True
        assert os.read(read_end, 100) == b"first\n"
        os.close(read_end)
        assert out.line("second") is False and out.gone
        assert out.line("third") is False
        # the descriptor now goes to /dev/null: the flush at exit cannot fail again
        stream.write("more\n")
        stream.flush()
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    finally:
        stream.close()


# -- the progress bar --------------------------------------------------------------------------


def test_the_bar_counts_records_with_separators_and_a_rate_without_inventing_a_total() -> None:
    screen = FakeTerminal()
    with terminal.Progress("t2c", screen) as bar:
        for _ in range(12):
            bar.update(10_000, {"created": 100_000, "updated": 20_000, "skipped": 0, "dead_lettered": 1})
    lines = render_screen(screen.getvalue())
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"t2c: 120,000 records \[\d\d:\d\d, [\d,]+ records/s, created 100,000, updated 20,000, skipped 0, dead 1\]",
        lines[0],
    ), lines[0]
    assert "%" not in lines[0] and "e+" not in screen.getvalue()


def test_with_a_total_the_bar_shows_the_share_done_and_an_eta() -> None:
    screen = FakeTerminal()
    with terminal.Progress("t2c", screen, min_interval=0) as bar:
        bar.update(50_000, {"created": 50_000}, total=200_000)  # the source said, with its first page
        halfway = render_screen(screen.getvalue())[-1]
        bar.update(150_000, {"created": 200_000})
    final = render_screen(screen.getvalue())[-1]
    assert re.search(r"^t2c:  25%\|.*\| 50,000/200,000 records \[\d\d:\d\d<[\d.]+s, [\d,]+ records/s", halfway), halfway
    assert re.search(r"^t2c: 100%\|.*\| 200,000/200,000 records \[\d\d:\d\d<0\.0s, ", final), final


def test_log_lines_whose_reader_left_are_dropped_without_failing_the_caller() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        logs.configure("info", "json", stream=stream)
        log = structlog.get_logger("test")
        with terminal.run_logs(stream):
            log.info("first")
            assert b'"event":"first"' in os.read(read_end, 1000)
            os.close(read_end)
            log.warning("nobody.reads.this")  # raised BrokenPipeError into the caller before
            __import__("logging").getLogger("httpx.test").warning("nor this")
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    finally:
        stream.close()


def test_log_lines_go_above_the_bar_not_into_it() -> None:
    screen = FakeTerminal()
    logs.configure("info", "console", stream=screen)
    log = structlog.get_logger("test")
    with terminal.Progress("t2c", screen) as bar:
        bar.update(1_000, {"created": 1_000})
        log.warning("record.dead_lettered", ref="line 17")
        __import__("logging").getLogger("httpx.test").warning("a library says %s", "hello")
        bar.update(1_000, {"created": 2_000})
    log.info("after.the.bar")
    lines = [SGR.sub("", line) for line in render_screen(screen.getvalue())]
    assert len(lines) == 4, lines
    assert "record.dead_lettered" in lines[0] and "records [" not in lines[0]
    assert "a library says hello" in lines[1] and "records [" not in lines[1]
    assert lines[2].startswith("t2c: 2,000 records [")
    assert "after.the.bar" in lines[3]
    # the print logger is the one logs.configure made again
    assert structlog.get_config()["logger_factory"]._file is screen
