"""CSV files, both directions.

**Reading** (a source): one file per stream, read whole, then filtered to the rows at or
after the cursor (:mod:`ferryman.cursor`) and yielded in ``(updated_at, key)`` order, so the
file's own row order does not matter. A row that cannot become a record (missing columns,
a bad date, invalid UTF-8, a naive timestamp with no ``timezone`` configured) is rejected
with its line number and the reason; every other row is delivered. What would lose rows
silently stops the run instead, with nothing delivered and the cursor held: a quote left
open (every later line reads as one cell), a quote that swallows whole lines up to a
later one, and a file that keeps changing while it is read (a file rewritten in place
during a read is read again; one replaced by rename is read as the snapshot it was).

**Writing** (a target): one row per record key, timestamps as UTC ``Z``. The target
file is never torn, even on ``kill -9``: a run writes to ``NAME.csv.partial.TOKEN`` (a
copy of the published file plus appended rows; TOKEN names the writing process), whose
byte offset is committed in the same state transaction as the cursor; a restart truncates
the partial back to the committed offset, and the end of a run publishes it with an
atomic rename. Updated keys are noted in ``NAME.csv.partial-updates.TOKEN`` so publishing
keeps only each key's latest row. Each process writes its own partial: when another
instance takes a pipeline over (its holder stalled past the lease), it copies the
committed part of the old holder's partial into its own and removes the old one, so a
stalled holder that wakes up appends only to a file nobody publishes, and its own publish
finds nothing to rename.

Columns written: ``key, updated_at, deleted``, the record type's fields, then ``extra``
(JSON). ``columns`` maps canonical fields to other header names, in both directions. A
cell holding a line break or a lone carriage return is always quoted. With
``formula_guard`` (on by default) a text field starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return is written with a ``'`` before it, so that a spreadsheet shows it
as text instead of running it as a formula (OWASP's advice on CSV injection); a sign
followed only by digits and separators (a phone number) is left as it is. Reading removes
that ``'`` again, so Ferryman reads back exactly what it wrote. Typed fields (amounts,
dates, booleans) are never changed.

Options::

    exports:
      connector: csv
      directory: ./var/exports          # created if missing
      files: {tickets: tickets.csv}     # default <stream>.csv; must stay inside directory
      streams: {tickets: ticket}        # stream name -> record kind; default: tickets, contacts,
                                        # organisations, invoices
      columns: {tickets: {subject: Title}}
      timezone: Europe/Berlin           # for input timestamps without an offset (default: reject them)
      delimiter: ","
      precision: 1s                     # finest step of the files' updated_at (1s, ms, us, minutes)
      formula_guard: true               # prefix text starting with = + - @ with ' (false: as it is)

See ``README.md`` beside this file for the assumptions these rest on.
"""

from __future__ import annotations

import asyncio
import csv
import io
import operator
import os
import re
import shutil
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from glob import escape as glob_escape
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar

import orjson
import structlog
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WrapSerializer,
    field_validator,
)

from ferryman.api import key_problem, nesting_problem
from ferryman.connector import Capability, Connector, ConnectorOptions, Page, Reject, StreamInfo
from ferryman.cursor import SECOND, Cursor, is_older, parse_precision
from ferryman.errors import FatalError, RecordRejected, ValidationFailed
from ferryman.records import Money, Record, UtcDateTime, record_type
from ferryman.sdk.readloop import whole_list_pages
from ferryman.timeutil import UTC, ZoneName, format_utc, parse_datetime

csv.field_size_limit(16 * 1024 * 1024)
log = structlog.get_logger("ferryman.connectors.csv")

DEFAULT_STREAMS = {"tickets": "ticket", "contacts": "contact", "organisations": "organisation", "invoices": "invoice"}
FIXED = ("key", "updated_at", "deleted")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}
#: reads of one file in a row that may find it changed under them before the run stops
READ_ATTEMPTS = 3


def _inside_directory(name: str, info: ValidationInfo) -> str:
    """A ``files`` entry: a file name relative to ``directory`` that stays inside it.

    Checked when the configuration is loaded, symbolic links included, so a typo or a hostile
    override (``FERRYMAN_SYSTEMS__...__FILES__...``) cannot read or replace a file elsewhere."""
    if not name.strip():
        raise ValueError("a file name is needed (relative to directory)")
    if "\x00" in name:
        raise ValueError("a file name cannot hold a NUL character")
    relative = Path(name)
    if relative.is_absolute():
        raise ValueError(f"{name!r} is an absolute path: file names are relative to directory and stay inside it")
    if ".." in relative.parts:
        raise ValueError(f"{name!r} climbs out of directory with '..': file names must stay inside it")
    if relative.parts in ((), (".",)):
        raise ValueError(f"{name!r} names the directory itself, not a file in it")
    directory = info.data.get("directory")
    if directory is not None:
        base = Path(directory).resolve()
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            raise ValueError(
                f"{name!r} leads outside directory {base} through a symbolic link (to {target}): "
                "file names must stay inside it"
            )
    return name


class CsvOptions(ConnectorOptions):
    directory: Path
    files: dict[str, Annotated[str, AfterValidator(_inside_directory)]] = Field(default_factory=dict)
    streams: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STREAMS))
    columns: dict[str, dict[str, str]] = Field(default_factory=dict)
    timezone: ZoneName | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    #: the finest step of the files' updated_at (whole seconds unless the exporter writes
    #: finer): an overlap shorter than this is raised to it by the cursor policy
    precision: Annotated[timedelta, BeforeValidator(parse_precision)] = SECOND
    #: write text that a spreadsheet would run as a formula with a ``'`` before it (and read
    #: it back without): CSV files are opened in spreadsheets, and record text comes from
    #: whoever filled in a form in the source app
    formula_guard: bool = True

    @field_validator("streams")
    @classmethod
    def _kinds(cls, value: dict[str, str]) -> dict[str, str]:
        for kind in value.values():
            record_type(kind)
        return value


ALL = frozenset(Capability)


def _process_token() -> str:
    """Names this process in its partial files: host, pid and process start, hashed short."""
    import hashlib

    from ferryman.holders import host_id, start_token

    pid = os.getpid()
    return hashlib.sha256(f"{host_id()}|{pid}|{start_token(pid)}".encode()).hexdigest()[:12]


@dataclass
class _Sink:
    path: Path
    seed: bool  # start the partial from the published file (state knows it)
    token: str = field(default_factory=lambda: _process_token())  # looked up at each call
    fh: io.BufferedWriter | None = None
    updates_fh: io.BufferedWriter | None = None
    buffer: list[Record] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)
    base_offset: int = 0
    has_updates: bool = False
    published_pending: bool = False
    #: another process's partial files whose committed part this one copied: removed only
    #: once a checkpoint naming this process's partial is committed (or the file published),
    #: so a crash before that still finds the rows its state says were delivered
    superseded: list[Path] = field(default_factory=list)
    checkpoints_given: int = 0

    @property
    def partial(self) -> Path:
        return self.partial_of(self.token)

    @property
    def updates_path(self) -> Path:
        return self.updates_of(self.token)

    def partial_of(self, token: str | None) -> Path:
        """The partial of the process ``token`` ('' or None: before partials were per process)."""
        return self.path.with_name(self.path.name + ".partial" + (f".{token}" if token else ""))

    def updates_of(self, token: str | None) -> Path:
        return self.path.with_name(self.path.name + ".partial-updates" + (f".{token}" if token else ""))

    def leftovers(self) -> list[Path]:
        """Every process's partial files of this sink, this one's included."""
        return sorted(
            p
            for pattern in (".partial", ".partial.*", ".partial-updates", ".partial-updates.*")
            for p in self.path.parent.glob(glob_escape(self.path.name) + pattern)
        )


class CsvConnector(Connector):
    """CSV files in a directory, one per stream."""

    kind = "csv"
    Options = CsvOptions
    summary = "CSV files, read incrementally by updated_at and written crash-safely"
    transactional_writes: ClassVar[bool] = True
    #: a row is kept under its record's key, the source key: the engine keeps one slim
    #: fingerprint row per key for it instead of a full link row (state 1/3 the size)
    keyed_by_source: ClassVar[bool] = True

    options: CsvOptions

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._sinks: dict[str, _Sink] = {}
        #: streams whose source file was not there when read (``read`` found nothing to do)
        self._absent: set[str] = set()
        self._streams = {
            name: StreamInfo(name, record_type(kind), ALL, natural_key="key", precision=self.options.precision)
            for name, kind in self.options.streams.items()
        }
        self._field_cache: dict[str, list[str]] = {}
        self._plan_cache: dict[str, list[tuple[int, _Converter]] | None] = {}
        self._text_cache: dict[str, frozenset[str]] = {}
        # Where a cell may hold a formula: a quoted cell starting with any formula character,
        # an unquoted one starting with = @ or a sign followed by more than a plain number (so
        # a batch of phone numbers keeps the fast path). False hits only cost the slow path.
        d = re.escape(self.options.delimiter)
        cell = rf"(?:\"'*[=@\t\r+\-]|'*(?:[=@\t\r]|[+\-][{_PLAIN}]*[^{_PLAIN}{d}\n]))"
        self._formula_start = re.compile(cell)  # the text's first cell
        # a cell after a delimiter or a line end: beginning with a character class lets the
        # regex engine skip to the separators (1.5x faster than "(?:^|,)" in MULTILINE)
        self._maybe_formula = re.compile(rf"[{d}\n]{cell}")

    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return {
            name: StreamInfo(name, record_type(kind), ALL, natural_key="key") for name, kind in DEFAULT_STREAMS.items()
        }

    def streams(self) -> Mapping[str, StreamInfo]:
        return self._streams

    def path(self, stream: str) -> Path:
        return Path(self.options.directory) / self.options.files.get(stream, f"{stream}.csv")

    async def check(self) -> None:
        directory = Path(self.options.directory)
        if directory.exists() and not directory.is_dir():
            raise FatalError(f"{directory} is not a directory", system=self.name)
        if directory.exists() and not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            raise FatalError(f"{directory} is not readable and writable by this user", system=self.name)

    # -- columns ------------------------------------------------------------------------
    def _fields(self, stream: str) -> list[str]:
        fields = self._field_cache.get(stream)
        if fields is None:
            rtype = self.stream(stream).record_type
            fields = [*FIXED, *(f for f in rtype.model_fields if f not in (*FIXED, "extra")), "extra"]
            self._field_cache[stream] = fields
        return fields

    def _text_fields(self, stream: str) -> frozenset[str]:
        """The fields written as they are (str and literal text): the only ones formula_guard touches."""
        texts = self._text_cache.get(stream)
        if texts is None:
            rtype = self.stream(stream).record_type
            texts = frozenset(
                name
                for name in self._fields(stream)
                if _converter(rtype.model_fields[name].annotation, rtype.model_fields[name].metadata) is None
            )
            self._text_cache[stream] = texts
        return texts

    def _text(self, cell: str | None) -> str | None:
        """A text cell as the record holds it (formula_guard's ``'`` removed)."""
        if cell and self.options.formula_guard and cell[0] == "'":
            return _unguard(cell)
        return cell

    def _header_for(self, stream: str) -> dict[str, str]:
        """canonical field -> column header."""
        renames = self.options.columns.get(stream, {})
        return {f: renames.get(f, f) for f in self._fields(stream)}

    # -- reading ------------------------------------------------------------------------
    def _rows(self, stream: str, path: Path | None = None) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
        """(line number, row, problem) for each data row of the stream's file."""
        path = path or self.path(stream)
        with self._open(path) as raw:
            yield from self._parse(stream, path, raw)

    def _open(self, path: Path) -> BinaryIO:
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise FatalError(f"{path}: file not found", system=self.name) from None

    def _parse(self, stream: str, path: Path, raw: BinaryIO) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        try:  # the caller owns ``raw``: closing the wrapper would close it under fstat()
            yield from self._parse_text(stream, path, text)
        finally:
            text.detach()

    def _parse_text(
        self, stream: str, path: Path, text: io.TextIOWrapper
    ) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
        reader = csv.reader(text, delimiter=self.options.delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FatalError(f"{path}: line 1: unreadable header: {exc}", system=self.name) from None
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        wanted = self._header_for(stream)
        for required in ("key", "updated_at"):
            if wanted[required] not in header:
                raise FatalError(f"{path}: line 1: missing column {wanted[required]!r}", system=self.name)
        line = 1
        last: tuple[int, list[str]] | None = None
        while True:
            start = line + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                line = reader.line_num
                yield start, None, f"unparseable CSV: {exc}"
                continue
            line = reader.line_num
            if not cells:
                continue
            last = (start, cells)
            if any(_bad_utf8(c) for c in cells):
                bad = [h for h, c in zip(header, cells, strict=False) if _bad_utf8(c)]
                clean = {h: c for h, c in zip(header, cells, strict=False) if not _bad_utf8(c)}
                yield start, clean, f"invalid UTF-8 in column {', '.join(bad) or '?'}"
                continue
            if len(cells) != len(header):
                if line > start:
                    # A row over several lines with the wrong number of cells is a quote opened
                    # by mistake: the lines in between (rows of their own) are inside one cell.
                    # Dead-lettering it would drop those rows without a word, so stop.
                    raise FatalError(
                        f"{path}: line {start}: a quote opened on this line closes only on line {line}, so "
                        f"lines {start}-{line} read as one row of {len(cells)} cells (expected {len(header)}): "
                        "the rows in between would be lost. Fix the quoting in the file; nothing was delivered "
                        "from it",
                        system=self.name,
                    )
                yield (
                    start,
                    dict(zip(header, cells, strict=False)),
                    f"expected {len(header)} columns, found {len(cells)}",
                )
                continue
            yield start, dict(zip(header, cells, strict=True)), None
        if last is not None and any("\n" in c or "\r" in c for c in last[1]) and self._open_quote(path, last[0]):
            raise FatalError(
                f"{path}: line {last[0]}: a quote opened on this line is never closed, so every line after it "
                "reads as part of one cell and the rows there would be lost. Fix the quoting in the file; "
                "nothing was delivered from it",
                system=self.name,
            )

    def _open_quote(self, path: Path, start: int) -> bool:
        """Whether the row starting at line ``start`` runs into the end of the file inside a
        quote. A lenient reader takes the rest of the file as the cell; only the last row
        can hide that, and only when one of its cells holds a line break, so this second
        look (strict, from that line on) is rare."""
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as fh:
            for _ in range(start - 1):
                if not fh.readline():
                    return False
            try:
                for _ in csv.reader(fh, delimiter=self.options.delimiter, strict=True):
                    pass
            except csv.Error as exc:
                return "end of data" in str(exc)
        return False

    def _to_record(self, stream: str, row: dict[str, str]) -> Record:
        rtype = self.stream(stream).record_type
        header = self._header_for(stream)
        used = set(header.values())
        texts = self._text_fields(stream) if self.options.formula_guard else frozenset()
        data: dict[str, Any] = {}
        for fname, column in header.items():
            if column not in row or fname == "extra":
                continue
            value = row[column]
            if value == "":
                data[fname] = None
            elif value[0] == "'" and fname in texts:
                data[fname] = _unguard(value)
            else:
                data[fname] = value
        extra: dict[str, Any] = {}
        if row.get(header["extra"]):
            try:
                loaded = orjson.loads(row[header["extra"]])
            except orjson.JSONDecodeError:
                raise ValidationFailed("extra: not valid JSON") from None
            if not isinstance(loaded, dict):
                raise ValidationFailed("extra: must be a JSON object")
            extra.update(loaded)
        for column, value in row.items():
            if column not in used and value != "":
                extra[column] = value
        data["extra"] = extra
        deleted = (data.get("deleted") or "").strip().lower()
        if deleted not in _TRUE | _FALSE:
            raise ValidationFailed(f"deleted: {data['deleted']!r} is not true/false")
        data["deleted"] = deleted in _TRUE
        for fname in rtype.datetime_fields():
            text = data.get(fname)
            if isinstance(text, str):
                try:
                    data[fname] = parse_datetime(text, assume_tz=self.options.timezone)
                except ValueError as exc:
                    raise ValidationFailed(f"{fname}: {exc}") from None
        if not data.get("key"):
            raise ValidationFailed("key: empty")
        problem = key_problem(data["key"])
        if problem is not None:
            raise ValidationFailed(f"key: {problem}")
        too_deep = nesting_problem({"extra": extra}) if extra else None
        if too_deep is not None:
            raise ValidationFailed(too_deep)
        try:
            return rtype.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValidationFailed(f"{loc}: {err['msg']}") from None

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        self.stream(stream)
        path = self.path(stream)
        if not path.exists():
            # An empty drop folder: nothing was dropped yet, so there is nothing to do (a run
            # of 0 records, ok). ``get`` then refuses to call a record gone: a file that is
            # not there says nothing about the records it would hold.
            self._absent.add(stream)
            log.info("csv.no_file", system=self.name, stream=stream, path=str(path))
            return
        self._absent.discard(stream)
        for _ in range(READ_ATTEMPTS):
            with self._open(path) as raw:
                before = os.fstat(raw.fileno())
                records, rejects = await self._read_whole(stream, path, raw, since)
                after = os.fstat(raw.fileno())
            # The same open file grew, shrank or was rewritten while it was read: what was read
            # may be half old and half new (rows torn at a buffer boundary, rows skipped because
            # they moved). A file replaced by rename keeps the open one intact and is not this.
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                break
        else:
            raise FatalError(
                f"{path} changed while it was being read, {READ_ATTEMPTS} times in a row; nothing was delivered. "
                "Have the program that writes it write a new file and rename it into place",
                system=self.name,
            )
        # The whole file is in hand, so it is sorted here: its row order does not matter.
        for page in whole_list_pages(records, rejects, since, page_size):
            yield page

    async def _read_whole(
        self, stream: str, path: Path, raw: BinaryIO, since: Cursor | None
    ) -> tuple[list[Record], list[Reject]]:
        records: list[Record] = []
        rejects: list[Reject] = []
        header = self._header_for(stream)
        key_column, updated_column = header["key"], header["updated_at"]
        for count, (line, row, problem) in enumerate(self._parse(stream, path, raw), 1):
            if count % 5000 == 0:
                await asyncio.sleep(0)  # a big file must not starve the daemon's loop (watchdog)
            key = self._text((row or {}).get(key_column)) or None
            if key is not None and key_problem(key) is not None:
                key = None  # the letter could not hold it: the line names the row
            if problem is not None:
                rejects.append(Reject(f"line {line}", problem, raw=row, key=key))
                continue
            assert row is not None
            if since is not None and is_older(self._stamp(row, updated_column), since):
                continue  # cheap: one timestamp parse; validated (or dead-lettered) when it was new
            try:
                records.append(self._to_record(stream, row))
            except ValidationFailed as exc:
                rejects.append(Reject(f"line {line}", str(exc), raw=row, key=key))
        return records, rejects

    def _stamp(self, row: dict[str, str], column: str) -> datetime | None:
        try:
            return parse_datetime(row[column], assume_tz=self.options.timezone)
        except (ValueError, KeyError):
            return None

    def _lookup(self, stream: str, key: str, path: Path | None = None) -> Record | None:
        """The row for ``key`` (the last one, if a key repeats), or None."""
        header = self._header_for(stream)
        target = path or self.path(stream)
        if not target.exists():
            return None
        found: tuple[int, dict[str, str] | None, str | None] | None = None
        for line, row, problem in self._rows(stream, target):
            if row is not None and self._text(row.get(header["key"])) == key:
                found = (line, row, problem)
        if found is None:
            return None
        line, row, problem = found
        if problem is not None or row is None:
            raise ValidationFailed(f"line {line}: {problem}")
        try:
            return self._to_record(stream, row)
        except ValidationFailed as exc:
            raise ValidationFailed(f"line {line}: {exc}") from None

    async def get(self, stream: str, key: str) -> Record | None:
        if stream in self._absent and not self.path(stream).exists():
            raise FatalError(
                f"{self.path(stream)}: file not found, so whether record {key!r} still exists cannot be told",
                system=self.name,
            )
        return self._lookup(stream, key)

    async def find(self, stream: str, record: Record) -> Record | None:
        sink = self._sinks.get(stream)
        if sink is not None and sink.fh is not None:
            self._flush(sink)
            return self._lookup(stream, record.key, sink.partial)
        return self._lookup(stream, record.key)

    # -- writing ------------------------------------------------------------------------
    def _sink(self, stream: str) -> _Sink:
        sink = self._sinks.get(stream)
        if sink is None:
            sink = _Sink(self.path(stream), seed=True)
            self._sinks[stream] = sink
        return sink

    def _encode(self, stream: str, records: list[Record]) -> bytes:
        """CSV rows for ``records``: one writer for the whole batch (this is the hot path).

        The cells are what a JSON-mode dump gives (see :func:`_json_cell`), computed from the
        field values directly: a pydantic dump per record cost more than the rest of the
        encoding together."""
        fields = self._fields(stream)
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self.options.delimiter, lineterminator="\n")
        plan = self._cell_plan(stream)
        rows: list[Sequence[Any]]
        if plan is None:
            rows = [[_json_cell(d.get(f)) for f in fields] for d in (r.model_dump(mode="json") for r in records)]
        elif records:
            # column by column: one comprehension per converted column instead of a call
            # per cell in a loop per row (the page is the unit of work)
            cells = map(operator.itemgetter(*fields), [r.__dict__ for r in records])
            columns: list[Sequence[Any]] = list(zip(*cells, strict=True))
            for i, convert in plan:
                columns[i] = _convert_column(convert, columns[i], records)
            rows = list(zip(*columns, strict=True))
        else:
            rows = []
        writer.writerows(rows)  # None is written as an empty cell
        text = buf.getvalue()
        # Both checks scan the batch's text once, in C; rows are only redone when they hit.
        guard = self.options.formula_guard and self._may_hold_formula(text)
        if guard or "\r" in text:
            text = self._encode_slow(stream, rows, guard)
        return text.encode("utf-8")

    def _may_hold_formula(self, text: str) -> bool:
        """Whether a cell of ``text`` may start with a formula (the first cell of the text, or
        one after a delimiter or a newline): :attr:`_maybe_formula` searches from the
        separators, which the regex engine skips to directly."""
        return self._formula_start.match(text) is not None or self._maybe_formula.search(text) is not None

    def _encode_slow(self, stream: str, rows: Sequence[Sequence[Any]], guard: bool) -> str:
        """The rows again, with formula_guard applied to text cells and lone ``\\r`` quoted."""
        fields = self._fields(stream)
        texts = self._text_fields(stream)
        indices = [i for i, name in enumerate(fields) if name in texts] if guard else []
        buf = io.StringIO()
        writer = _RowWriter(buf, self.options.delimiter)
        for cells in rows:
            row = list(cells)
            for i in indices:
                if row[i]:
                    row[i] = _guard(row[i])
            writer.writerow(row)
        return buf.getvalue()

    def _cell_plan(self, stream: str) -> list[tuple[int, _Converter]] | None:
        """Per column that is not a plain string: its index and how to write it (None: dump records)."""
        if stream not in self._plan_cache:
            rtype = self.stream(stream).record_type
            plan: list[tuple[int, _Converter]] | None = []
            for i, name in enumerate(self._fields(stream)):
                info = rtype.model_fields[name]
                convert = _converter(info.annotation, info.metadata)
                if convert is _UNKNOWN:
                    plan = None
                    break
                if convert is not None and plan is not None:
                    plan.append((i, convert))
            self._plan_cache[stream] = plan
        return self._plan_cache[stream]

    async def restore(self, stream: str, checkpoint: dict[str, Any] | None) -> None:
        old = self._sinks.pop(stream, None)
        if old is not None:
            _close(old)
        sink = _Sink(self.path(stream), seed=checkpoint is not None)
        self._sinks[stream] = sink
        # A publish that a crash cut short while it compacted: the published file is whole
        # (it is only ever replaced by a rename), its half-made copy is garbage, as large as
        # the file. Found by the 1,000,000-record kill test (tests/e2e/test_crash_million.py).
        for stale in sink.path.parent.glob(glob_escape(sink.path.name) + ".compact.*"):
            stale.unlink(missing_ok=True)
        if checkpoint and checkpoint.get("state") == "open":
            owner = checkpoint.get("token")  # the process whose partial holds the committed rows
            committed, updates = sink.partial_of(owner), sink.updates_of(owner)
            if committed.exists():
                if committed != sink.partial:
                    # Another process committed it (a crash and restart, or a takeover): its
                    # committed part becomes ours, so a holder that stalled and wakes up
                    # writes only to a file that nobody publishes. Its files go once our
                    # own checkpoint is committed: until then the state still names them.
                    _copy_prefix(committed, sink.partial, int(checkpoint["offset"]))
                    _copy_prefix(updates, sink.updates_path, int(checkpoint.get("updates_offset", 0)))
                    _fsync_dir(sink.path.parent)
                    sink.superseded = [committed, updates]
                _truncate(sink.partial, int(checkpoint["offset"]))
                _truncate(sink.updates_path, int(checkpoint.get("updates_offset", 0)))
                for stale in sink.leftovers():
                    if stale not in (sink.partial, sink.updates_path, committed, updates):
                        stale.unlink(missing_ok=True)
                sink.fh = sink.partial.open("ab")
                sink.updates_fh = sink.updates_path.open("ab")
                sink.base_offset = int(checkpoint.get("base_offset", 0))
                sink.has_updates = bool(checkpoint.get("has_updates"))
                return
            # The partial was renamed into place after the last commit: it is published.
            sink.published_pending = True
        for stale in sink.leftovers():
            stale.unlink(missing_ok=True)

    def _open_partial(self, stream: str, sink: _Sink) -> None:
        sink.path.parent.mkdir(parents=True, exist_ok=True)
        if sink.seed and sink.path.exists():
            shutil.copyfile(sink.path, sink.partial)
        else:
            header = self._header_for(stream)
            buf = io.StringIO()
            _RowWriter(buf, self.options.delimiter).writerow([header[f] for f in self._fields(stream)])
            sink.partial.write_bytes(buf.getvalue().encode("utf-8"))
        sink.base_offset = sink.partial.stat().st_size
        sink.updates_path.write_bytes(b"")
        sink.fh = sink.partial.open("ab")
        sink.updates_fh = sink.updates_path.open("ab")

    def _write(self, stream: str, record: Record, *, update: bool) -> Record:
        sink = self._sink(stream)
        sink.buffer.append(record)
        if update:
            sink.updates.append(orjson.dumps(record.key) + b"\n")
        return record

    async def create(self, stream: str, record: Record) -> Record:
        return self._write(stream, record, update=False)

    async def write_page(
        self, stream: str, writes: Sequence[tuple[str | None, Record]]
    ) -> list[Record | RecordRejected]:
        """The page into the sink's buffer at once: rows are encoded and made durable by
        :meth:`checkpoint`, so nothing here can be refused or half-done."""
        sink = self._sink(stream)
        out: list[Record | RecordRejected] = []
        for key, record in writes:
            if key is not None:
                if record.key != key:
                    record = record.model_copy(update={"key": key})
                sink.updates.append(orjson.dumps(key) + b"\n")
            sink.buffer.append(record)
            out.append(record)
        return out

    async def update(self, stream: str, key: str, record: Record) -> Record:
        return self._write(stream, record.model_copy(update={"key": key}), update=True)

    async def delete(self, stream: str, key: str) -> None:
        # one row per key: a deleted record keeps its row, marked deleted
        rtype = self.stream(stream).record_type
        from ferryman.timeutil import utcnow

        self._write(stream, rtype(key=key, updated_at=utcnow(), deleted=True), update=True)

    def _flush(self, sink: _Sink) -> None:
        _fsync_all(self._write_out(sink))

    def _write_out(self, sink: _Sink) -> list[int]:
        """Write what the sink holds to its files; returns the files to fsync (duplicated
        descriptors, closed by :func:`_fsync_all`), none when nothing was written."""
        if not sink.buffer and sink.fh is not None:
            return []
        if sink.fh is None:
            self._open_partial(self._stream_of(sink), sink)
        assert sink.fh is not None and sink.updates_fh is not None
        if sink.buffer:
            sink.fh.write(self._encode(self._stream_of(sink), sink.buffer))
            sink.buffer.clear()
        durable: list[int] = []
        if sink.updates:
            sink.updates_fh.write(b"".join(sink.updates))
            sink.updates.clear()
            sink.has_updates = True
            sink.updates_fh.flush()
            durable.append(os.dup(sink.updates_fh.fileno()))
        sink.fh.flush()
        durable.append(os.dup(sink.fh.fileno()))
        return durable

    def _stream_of(self, sink: _Sink) -> str:
        return next(s for s, v in self._sinks.items() if v is sink)

    async def checkpoint(self, stream: str) -> dict[str, Any] | None:
        sink = self._sink(stream)
        # the engine commits each checkpoint before it asks for the next: by now the state
        # names this process's partial, and the one copied at restore is no longer needed
        if sink.checkpoints_given:
            _drop(sink.superseded)
        sink.checkpoints_given += 1
        if not sink.buffer and sink.fh is None:
            return {"state": "published"} if sink.published_pending or sink.seed else None
        # the fsyncs wait in a thread, not on the event loop (the next page is being read
        # meanwhile); on duplicated descriptors, so a close of the sink cannot pull the file
        # from under them
        await asyncio.to_thread(_fsync_all, self._write_out(sink))
        assert sink.fh is not None and sink.updates_fh is not None
        return {
            "state": "open",
            "token": sink.token,
            "offset": sink.fh.tell(),
            "updates_offset": sink.updates_fh.tell(),
            "base_offset": sink.base_offset,
            "has_updates": sink.has_updates,
        }

    async def finish(self, stream: str) -> dict[str, Any] | None:
        sink = self._sinks.get(stream)
        if sink is None:
            return None
        if sink.fh is None:
            if sink.buffer:
                self._flush(sink)
            else:
                return {"state": "published"} if sink.published_pending else None
        self._flush(sink)
        assert sink.fh is not None
        _close(sink)
        if sink.has_updates:
            # Compacted straight into the published file; the partial is never rewritten,
            # so it always still matches the offset committed for it (a crash between here
            # and the unlink just publishes it again, compacted again, next time).
            self._compact(stream, sink)
            sink.partial.unlink()
        else:
            os.replace(sink.partial, sink.path)
        _fsync_dir(sink.path.parent)
        sink.updates_path.unlink(missing_ok=True)
        _drop(sink.superseded)  # published: what they held is in the file now
        self._sinks[stream] = _Sink(sink.path, seed=True)
        return {"state": "published"}

    def _compact(self, stream: str, sink: _Sink) -> None:
        """Publish the partial keeping only each updated key's last row (others untouched)."""
        updated = {orjson.loads(line) for line in sink.updates_path.read_bytes().splitlines() if line.strip()}
        key_column = self._header_for(stream)["key"]
        last: dict[str, int] = {}
        with sink.partial.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=self.options.delimiter)
            for index, row in enumerate(reader):
                key = self._text(row.get(key_column)) or ""
                if key in updated:
                    last[key] = index
        tmp = sink.path.with_name(sink.path.name + f".compact.{sink.token}")
        with sink.partial.open(encoding="utf-8", newline="") as src, tmp.open("w", encoding="utf-8", newline="") as dst:
            reader2 = csv.reader(src, delimiter=self.options.delimiter)
            writer = _RowWriter(dst, self.options.delimiter)
            header = next(reader2)
            writer.writerow(header)
            position = header.index(key_column)
            for index, cells in enumerate(reader2):
                key = self._text(cells[position]) or "" if position < len(cells) else ""
                if key in updated and last.get(key) != index:
                    continue
                writer.writerow(cells)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, sink.path)

    async def close(self) -> None:
        for sink in self._sinks.values():
            _close(sink)


def _close(sink: _Sink) -> None:
    for fh in (sink.fh, sink.updates_fh):
        if fh is not None and not fh.closed:
            fh.close()


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes, the length committed for it.

    A file shorter than that was changed behind our back: extending it would fill it with
    zeros, so that is refused with what to do instead."""
    if not path.exists():
        path.write_bytes(b"")
        return
    actual = path.stat().st_size
    if actual < size:
        raise FatalError(
            f"{path} is {actual} bytes but {size} were committed: it was changed outside Ferryman; "
            "remove it and run `ferryman reset PIPELINE` to rebuild the file from the source"
        )
    with path.open("r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def _drop(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    paths.clear()


def _copy_prefix(source: Path, dest: Path, size: int) -> None:
    """Write the first ``size`` bytes of ``source`` to ``dest`` (replaced), durably. A source
    shorter than that was changed behind our back: :func:`_truncate` says so next."""
    with source.open("rb") as src, dest.open("wb") as dst:
        left = size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_all(fds: list[int]) -> None:
    """fsync then close each descriptor (all are closed, even when one fsync fails)."""
    try:
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RowWriter:
    """``csv.writer`` with ``\\n`` line ends, except that a row with a carriage return in a
    cell is written fully quoted: the csv module quotes only the terminator's characters, so
    a lone ``\\r`` went out bare and every reader (csv, Excel, ours) split the row there."""

    def __init__(self, out: typing.TextIO, delimiter: str) -> None:
        self._out = out
        self._delimiter = delimiter
        self._writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")

    def writerow(self, row: Sequence[Any]) -> None:
        if any(type(cell) is str and "\r" in cell for cell in row):
            self._out.write(self._delimiter.join(_quoted(cell) for cell in row) + "\n")
        else:
            self._writer.writerow(row)


def _quoted(cell: Any) -> str:
    text = "" if cell is None else str(cell)
    return '"' + text.replace('"', '""') + '"'


#: what a spreadsheet takes for the start of a formula (OWASP, "CSV Injection")
_FORMULA_START = frozenset("=+-@\t\r")
#: a sign, then only digits and separators: a phone number or a plain number, which a
#: spreadsheet at worst computes; it can name no cell or function, so it is left as it is
_PLAIN = r"0-9 ().\-/"
_PLAIN_NUMBER = re.compile(rf"[+-][{_PLAIN}]*")


def _formula(text: str) -> bool:
    if text[:1] not in _FORMULA_START:
        return False
    return not (text[0] in "+-" and _PLAIN_NUMBER.fullmatch(text))


def _guard(text: str) -> str:
    """``text`` as formula_guard writes it: a ``'`` before a formula. Text that starts with
    quotes before one gets another, so that reading back (:func:`_unguard`) is exact."""
    return "'" + text if _formula(text.lstrip("'")) else text


def _unguard(text: str) -> str:
    return text[1:] if _formula(text.lstrip("'")) else text


def _bad_utf8(cell: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in cell)


_Converter = Callable[[Any, Record], Any]
_UNKNOWN: Any = object()
_UTC_METADATA = list(typing.get_args(UtcDateTime)[1:])
_MONEY_METADATA = list(typing.get_args(Money)[1:])


def _utc_cell(value: datetime | None, record: Record) -> str | None:
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat()[:-6] + "Z"  # format_utc's text: "+00:00" becomes "Z"
    return format_utc(value)


def _money_cell(value: Decimal | None, record: Record) -> str | None:
    return None if value is None else format(value, "f")


def _date_cell(value: date | None, record: Record) -> str | None:
    return None if value is None else value.isoformat()


def _bool_cell(value: bool | None, record: Record) -> str | None:
    return None if value is None else ("true" if value else "false")


def _convert_column(convert: _Converter, column: Sequence[Any], records: Sequence[Record]) -> list[Any]:
    """One column's cells: the converters of the usual types inline, the rest per cell."""
    if convert is _utc_cell:
        return [None if v is None else (v.isoformat()[:-6] + "Z" if v.tzinfo is UTC else format_utc(v)) for v in column]
    if convert is _bool_cell:
        return [None if v is None else ("true" if v else "false") for v in column]
    if convert is _extra_cell:
        return ["" if not v else _extra_cell(v, r) for v, r in zip(column, records, strict=True)]
    return [convert(v, r) for v, r in zip(column, records, strict=True)]


def _plain_json(value: Any) -> bool:
    """True when ``value`` holds nothing but JSON types (a JSON-mode dump would not change it)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if kind is list:
        return all(_plain_json(v) for v in value)
    return False


def _extra_cell(value: dict[str, Any], record: Record) -> str:
    if not value:
        return ""
    if not _plain_json(value):  # datetimes, Decimals...: let pydantic say how they look in JSON
        value = record.model_dump(mode="json", include={"extra"})["extra"]
    return _json_cell(value)


def _converter(annotation: Any, metadata: Sequence[Any] = ()) -> _Converter | None:
    """How a field of this type becomes a cell, as a JSON-mode dump writes it (None: a string
    goes as it is; _UNKNOWN: no fast way, dump the records)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _converter(args[0], [*metadata, *args[1:]])
    if any(isinstance(m, PlainSerializer | WrapSerializer) for m in metadata):
        # only the serializers of the canonical types are known here
        if annotation is datetime and list(metadata) == _UTC_METADATA:
            return _utc_cell
        if annotation is Decimal and list(metadata) == _MONEY_METADATA:
            return _money_cell
        return _UNKNOWN
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _converter(args[0], metadata)
    if annotation is str or (origin is typing.Literal and all(type(a) is str for a in args)):
        return None
    if annotation is bool:
        return _bool_cell
    if annotation is date:
        return _date_cell
    if annotation == dict[str, Any]:
        return _extra_cell
    return _UNKNOWN


def _json_cell(value: Any) -> str:
    """A cell from a JSON-mode dump (datetimes are already ``Z`` strings, money plain text)."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode() if value else ""
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode() if value else ""
    return str(value)
