"""Configuration: one YAML file, environment overrides, secret references.

Order of precedence: YAML file < ``FERRYMAN_SECTION__KEY__...`` environment variables.
Only variables with a ``__`` in their name are overrides, so a secret kept in
``FERRYMAN_HELPDESK_KEY`` and referenced as ``${FERRYMAN_HELPDESK_KEY}`` is never
mistaken for one. Map keys are matched case-insensitively with ``-`` and ``_`` equal
(``FERRYMAN_PIPELINES__TICKETS_TO_CSV__PAGE_SIZE`` reaches ``pipelines.tickets-to-csv``).

Secrets are references, never literals: ``${ENV_NAME}``, ``${credential:NAME}`` (a file
in ``$CREDENTIALS_DIRECTORY``, as systemd's ``LoadCredential=`` provides) or
``${file:/path}``. A field typed :data:`Secret` given a literal is a config error. A
file's one final line ending is dropped; any other control character in a referenced
value is a config error naming the reference (never the value): an HTTP library refuses
such a header and quotes it whole in its error.

YAML anchors and aliases are bounded (:data:`MAX_ALIAS_NODES`, :data:`MAX_YAML_DEPTH`):
a few hundred bytes of nested anchors would otherwise expand without end.

Every problem raises :class:`~ferryman.errors.ConfigError` naming the file, the key
path and what is wrong; the CLI turns that into exit status 78.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import unicodedata
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ferryman.errors import ConfigError
from ferryman.redact import register_secret
from ferryman.timeutil import ZoneName, parse_duration

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "UNRESOLVED_SECRET",
    "AuditScheduleConfig",
    "ConfigProblems",
    "ConflictPolicy",
    "FerrymanConfig",
    "HistoryConfig",
    "JournalConfig",
    "PipelineConfig",
    "Secret",
    "SystemConfig",
    "did_you_mean",
    "load_config",
]

DEFAULT_CONFIG_PATH = "/etc/ferryman/ferryman.yaml"
ENV_PREFIX = "FERRYMAN_"

DEFAULT_LEASE_TTL = timedelta(seconds=60)
#: writes in flight per target app (see PipelineConfig.concurrency; bench/README.md, "push").
#: 1: with more, the writes already on their way when an app answers 429 reach it before its
#: Retry-After is over (the fault soak counts them as early retries), so it is opt-in.
DEFAULT_CONCURRENCY = 1

Secret = SecretStr
"""Type of config fields that hold secrets: only references may fill them."""

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ConflictPolicy = Literal["source_wins", "target_wins", "newest_wins", "manual"]

_REF = re.compile(r"\$\{(?:(?P<kind>credential|file|env):)?(?P<name>[^}]+)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StateConfig(_Model):
    """Where cursors, links, intents, runs and dead letters live."""

    url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://...; default $STATE_DIRECTORY/ferryman.db or ./var/ferryman.db",
    )
    lease_ttl: Duration = Field(
        default=DEFAULT_LEASE_TTL,
        description="how long a run's lease (or a webhook endpoint's) lasts unless renewed (every third of "
        "it); a pipeline whose instance died on another host moves to another instance after this long",
    )

    @field_validator("lease_ttl")
    @classmethod
    def _lease_ttl(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value

    def resolved_url(self) -> str:
        if self.url:
            return self.url
        base = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "./var"
        return f"sqlite:///{Path(base) / 'ferryman.db'}"


class HistoryConfig(_Model):
    """What Ferryman remembers about single records, for ``ferryman explain`` and the
    conflict journal (``ferryman conflicts``). Payloads are never stored: events keep
    fingerprints, field names and reasons; the journal keeps the values a sync overwrote,
    with secret fields and ``journal.redact`` fields masked."""

    events: Literal["changes", "all", "off"] = Field(
        default="changes",
        description="per-record events for `ferryman explain`: 'changes' records every decision except "
        "an unchanged record skipped (one row per record per run would grow with every scheduled run); "
        "'all' records those skips too; 'off' records nothing",
    )
    retention: Duration = Field(default=timedelta(days=30), description="events older than this are deleted")
    journal_retention: Duration = Field(
        default=timedelta(days=180), description="conflict-journal entries older than this are deleted"
    )

    @field_validator("retention", "journal_retention")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=1):
            raise ValueError("must be at least 1h")
        return value


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ControlConfig(_Model):
    """The daemon's local control API."""

    listen: str = Field(default="127.0.0.1:8765", description="HOST:PORT on loopback, or unix:/path")
    token: Secret | None = None
    metrics_public: bool = Field(
        default=False,
        description="serve GET /metrics without the token (for a Prometheus agent on this host); "
        "only with a loopback address or a Unix socket in control.listen",
    )

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: Secret | None) -> Secret | None:
        # an empty token would let in any request with an empty "Authorization: Bearer"
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "is empty: give a token (e.g. ${credential:control-token}), or leave control.token out "
                "to have the daemon generate one"
            )
        return value

    @field_validator("metrics_public")
    @classmethod
    def _metrics_public_only_locally(cls, value: bool, info: Any) -> bool:  # info: pydantic.ValidationInfo
        # The daemon refuses any non-loopback control.listen on its own; this names the
        # option that makes it matter, and holds should that rule ever be relaxed.
        import ipaddress

        listen = str(info.data.get("listen", "")).strip()
        if not value or not listen or listen.startswith("unix:"):
            return value
        host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise ValueError(
                f"true serves /metrics without a token, so control.listen must be a loopback address "
                f"(127.0.0.1:PORT, [::1]:PORT) or a Unix socket (unix:/path), not {listen!r}"
            )
        return value


class ScheduleConfig(_Model):
    every: Duration | None = None
    cron: str | None = None
    jitter: Duration = timedelta(0)
    timezone: ZoneName | None = Field(default=None, description="IANA zone the cron expression is read in; default UTC")

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' (e.g. 5m) or 'cron' (e.g. '*/5 * * * *')")
        if self.every is not None and self.every.total_seconds() < 1:
            raise ValueError("'every' must be at least 1s")
        return self


class DeletesConfig(_Model):
    """Deletes are opt-in per pipeline."""

    enabled: bool = False
    action: Literal["delete", "unlink"] = "delete"
    max_share: float = Field(default=0.1, ge=0.0, le=1.0, description="halt if a run would delete more")
    probe: bool = Field(
        default=False,
        description="find deletes a source hides from its lists: linked records are fetched one by one "
        "(those a full pass did not see, else a rotating share of probe_max) and a 404 or deleted status is "
        "a delete; costs up to probe_max requests a run, so it is opt-in (check warns where a source hides deletes)",
    )
    probe_max: int = Field(default=50, ge=1, le=100_000, description="item fetches one run may spend on probing")


class LoopBreakerConfig(_Model):
    """A pair written more than ``max_writes`` times within ``window`` is quarantined.

    A real loop (two apps normalising a value differently) writes on every run, so even a
    5-minute schedule trips the default within the hour; people rarely edit one record
    ten times an hour."""

    max_writes: int = Field(default=10, ge=1)
    window: Duration = timedelta(hours=1)


class ReferenceConfig(_Model):
    """A field holding another record's id, translated from the source app's id to the
    target app's through the links of the referenced stream.

    ``from`` is the referenced stream in the pipeline's source system, ``to`` in its target
    system (``to`` defaults to ``from``). The links are those any one-way or two-way
    pipeline between the two streams made, in either direction. ``missing`` says what
    happens to a record whose referenced record has no link yet: ``dead_letter`` (the
    default: it waits in the dead-letter table, retried at the start of every run until
    the reference can be translated) or ``drop`` (delivered with the field empty).
    """

    source: str = Field(alias="from", pattern=r"^[^.\s]+$", description="referenced stream in the source system")
    to: str | None = Field(default=None, pattern=r"^[^.\s]+$", description="and in the target system")
    missing: Literal["dead_letter", "drop"] = "dead_letter"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"from": value} if isinstance(value, str) else value

    def target_stream(self) -> str:
        return self.to or self.source


class JournalConfig(_Model):
    """The conflict journal of one pipeline: values a sync overwrote in a record that had
    changed since the last sync, kept so that ``ferryman conflicts restore`` can write them
    back. Two-way pipelines journal every conflict a policy resolves (both sides were read,
    so this costs nothing)."""

    enabled: bool = True
    check_target: bool = Field(
        default=False,
        description="one-way pipelines: before an update, read the target's record (one extra request per "
        "update) and journal the values the update overwrites when it changed there since the last sync",
    )
    redact: list[str] = Field(
        default_factory=list, description="fields whose values are masked in the journal (never restorable)"
    )


class AuditScheduleConfig(_Model):
    """``ferryman audit`` run by the daemon on a schedule, its findings exported as
    ``ferryman_audit_*`` gauges so that a silent loss becomes an alert."""

    every: Duration = Field(description="how often the daemon audits this pipeline (e.g. 1d)")
    sample: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="stop each audit's source pass after this many records (as ferryman audit --sample): a "
        "cheaper, partial audit of the first records the source returns; extras are then not checked",
    )

    @field_validator("every")
    @classmethod
    def _every(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        return value


class PipelineConfig(_Model):
    """``from: system.stream`` to one or more ``system.stream`` targets."""

    source: str = Field(alias="from")
    to: list[str]
    direction: Literal["one_way", "both"] = "one_way"
    schedule: ScheduleConfig | None = None
    page_size: int = Field(default=500, ge=1, le=100_000)
    overlap: Duration = timedelta(minutes=2)
    conflict: ConflictPolicy = "source_wins"
    conflict_fields: dict[str, ConflictPolicy] = Field(default_factory=dict)
    deletes: DeletesConfig = Field(default_factory=DeletesConfig)
    mapping: dict[str, Any] = Field(default_factory=dict)
    references: dict[str, ReferenceConfig] = Field(
        default_factory=dict,
        description="target fields holding another record's id (requester_key, organisation_key, customer_key), "
        "translated through the links of the referenced stream",
    )
    match_on: list[str] | None = None
    lookup: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="look a record up in the target (by natural key) before creating it: auto does so when "
        "links may have been lost (no cursor, no links for a target); always on every create",
    )
    max_pages: int = Field(
        default=10_000, ge=1, description="pages one run may read before it stops as failed (a paging loop guard)"
    )
    loop_breaker: LoopBreakerConfig = Field(default_factory=LoopBreakerConfig)
    allow_emails: bool = Field(default=False, description="let target apps email customers about our writes")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=32,
        description="writes to a target app in flight at once (never two for one record; inside the app's rate "
        "limit); 1 where a target settles creates one at a time (no lookup by natural key) and for files. Above 1, "
        "writes already on their way when the app answers 429 reach it before its Retry-After is over",
    )
    journal: JournalConfig = Field(default_factory=JournalConfig)
    audit: AuditScheduleConfig | None = None
    enabled: bool = True

    @field_validator("to", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("source")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _check_ref(value)

    @field_validator("to")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one target 'system.stream'")
        return [_check_ref(v) for v in value]

    @model_validator(mode="after")
    def _two_way(self) -> PipelineConfig:
        if self.direction == "both" and len(self.to) != 1:
            raise ValueError("a two-way pipeline ('direction: both') has exactly one 'to'")
        if self.direction == "both" and self.references:
            raise ValueError(
                "'references' are translated on one-way pipelines only; on a two-way pipeline "
                "map reference fields explicitly or drop them (mapping: {organisation_key: null})"
            )
        return self

    def source_ref(self) -> tuple[str, str]:
        system, stream = self.source.split(".", 1)
        return system, stream

    def target_refs(self) -> list[tuple[str, str]]:
        return [tuple(t.split(".", 1)) for t in self.to]  # type: ignore[misc]


def _check_ref(value: str) -> str:
    parts = value.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{value!r} is not 'system.stream'")
    return value


class SystemConfig(_Model):
    """One configured app or endpoint; the rest of its keys belong to its connector."""

    model_config = ConfigDict(extra="allow")
    connector: str


class FerrymanConfig(_Model):
    """The whole configuration file."""

    version: Literal[1] = 1
    instance: str | None = Field(default=None, description="this instance's name; default the host name")
    state: StateConfig = Field(default_factory=StateConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    systems: dict[str, SystemConfig] = Field(default_factory=dict)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # a section whose keys are all commented out is YAML null: it means "the defaults"
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data

    # Filled by load_config: each system's options validated by its connector's model.
    _options: dict[str, Any] = {}
    _file: str | None = None
    _systems_checked: bool = True
    _secrets_resolved: bool = True
    _read_only: bool = False

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def secrets_resolved(self) -> bool:
        """False when loaded with ``secrets=False`` and a reference stood for a placeholder:
        such a config is for reading state, never for reaching a system."""
        return self._secrets_resolved

    @property
    def read_only(self) -> bool:
        """Loaded with ``secrets=False``, for a command that only reads: the CLI opens no
        state database that does not exist yet for such a config."""
        return self._read_only

    def system_options(self, name: str) -> Any:
        if not self._systems_checked:
            raise RuntimeError("this config was loaded with systems=False: its systems' options were not validated")
        return self._options[name]

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none configured"
            hint = did_you_mean(name, self.pipelines)
            raise ConfigError(f"no pipeline named {name!r}{hint} (pipelines: {known})", file=self._file) from None


# -- loading ---------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    systems: bool = True,
    secrets: bool = True,
) -> FerrymanConfig:
    """Read, override, resolve and validate the configuration; raise ConfigError on any problem.

    Every problem found is reported at once (a :class:`ConfigProblems`, one line each),
    with "did you mean" for a misspelt key, system, connector, stream or pipeline.

    ``systems=False`` validates everything but the systems' connector options (and what
    needs a connector to check: which streams a system has): no connector is imported.
    ``ferryman status`` reads the config that way, to start fast; ``system_options()`` of
    such a config raises.

    ``secrets=False`` is for commands that only read (``status``, ``dlq list``, ``check
    --offline``): a reference that cannot be resolved (its variable unset, no credentials
    directory, an unreadable file) stands for :data:`UNRESOLVED_SECRET` instead of being an
    error; everything else is validated as usual. References under ``state`` are always
    resolved: they reach the database those commands read. Such a config says so
    (``secrets_resolved``) and must not be used to reach a system.
    """
    env = os.environ if environ is None else environ
    file = str(path or env.get("FERRYMAN_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found (use --config PATH or FERRYMAN_CONFIG)", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None
    raw = _load_yaml(text, file=file)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of sections (state, systems, pipelines...)", file=file)

    _apply_env_overrides(raw, env, file)
    problems: list[ConfigError] = []
    referenced: set[tuple[str, ...]] = set()
    unresolved: set[tuple[str, ...]] = set()
    resolver = _Resolver(env, file, problems, lenient=not secrets)
    resolved = resolver.resolve(raw, (), referenced, unresolved)

    try:
        config = FerrymanConfig.model_validate(resolved)
    except ValidationError as exc:
        problems.extend(_config_errors(exc, file, (), FerrymanConfig))
        config = _salvage(resolved)
    config._file = file
    config._secrets_resolved = not unresolved
    config._read_only = not secrets

    _check_names(config, file, problems)
    options: dict[str, Any] = {}
    if systems:
        for name, system in config.systems.items():
            validated = _validate_system(name, system, file, referenced, problems)
            if validated is not None:
                options[name] = validated
    config._options = options
    config._systems_checked = systems
    _check_secret_literals(config, (), file, referenced, problems)
    _check_pipelines(config, file, problems, streams=systems)
    if problems:
        raise ConfigProblems.of([_note_unresolved(p, unresolved) for p in problems])
    return config


def _note_unresolved(problem: ConfigError, unresolved: set[tuple[str, ...]]) -> ConfigError:
    """A problem with a value that stood for an unresolved reference says so: the real
    value may well be valid."""
    if problem.path is None or not any(problem.path == ".".join(u) for u in unresolved):
        return problem
    note = "; it holds a ${...} reference left unresolved (loaded without secrets): set what it names"
    return ConfigError(problem.problem + note, file=problem.file, path=problem.path)


class ConfigProblems(ConfigError):
    """Several problems in one config file: ``str()`` has one line per problem, each naming
    the file and the key path; ``file``, ``path`` and ``problem`` are the first one's."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.problem, file=first.file, path=first.path)
        self.problems = problems
        self.args = ("\n".join(str(p) for p in problems),)

    def __str__(self) -> str:
        return str(self.args[0])

    @staticmethod
    def of(problems: list[ConfigError]) -> ConfigError:
        """The one problem itself, or all of them together."""
        unique = list({str(p): p for p in problems}.values())
        return unique[0] if len(unique) == 1 else ConfigProblems(unique)


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _salvage(resolved: Any) -> FerrymanConfig:
    """The systems and pipelines that are valid on their own, from a config that is not:
    so that the checks across them (a pipeline naming an unknown system, a system's
    connector options) still run and report their problems with the first ones."""
    data = resolved if isinstance(resolved, dict) else {}
    found: dict[str, dict[str, Any]] = {"systems": {}, "pipelines": {}}
    for section, model in (("systems", SystemConfig), ("pipelines", PipelineConfig)):
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        for name, value in entries.items():
            try:
                found[section][str(name)] = model.model_validate(value)
            except ValidationError:  # reported with the whole file's problems
                # a pipeline with a bad key still has its references checked
                if model is PipelineConfig and isinstance(value, dict):
                    with contextlib.suppress(ValidationError):
                        bare = {k: value[k] for k in ("from", "to", "direction") if k in value}
                        found[section][str(name)] = PipelineConfig.model_validate(bare)
    return FerrymanConfig.model_construct(systems=found["systems"], pipelines=found["pipelines"])


#: nodes that aliases (``*name``, ``<<: *name``) may add to a file: generous for shared
#: defaults, far below what a few hundred bytes of nested anchors expand to
MAX_ALIAS_NODES = 10_000
#: nesting depth, aliases expanded: deeper documents are refused, not recursed into
MAX_YAML_DEPTH = 100


class _AliasLimit(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts what aliases expand to, and how deep the document goes.

    PyYAML shares one node among its aliases, so loading a billion laughs is quick; it
    is every walk over the result afterwards (overrides, references, validation) that
    runs forever. Measured here while composing, the bomb is refused before it is built.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._depth = 0
        self._open: list[str] = []  # anchors whose node is being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _AliasLimit(
                    f"alias *{event.anchor} refers to a node that holds it (a structure without end)", event.start_mark
                )
            node = super().compose_node(parent, index)
            if node is None:
                return None
            nodes, depth = self._measure(node)
            self._expanded += nodes
            if self._expanded > MAX_ALIAS_NODES:
                raise _AliasLimit(
                    f"aliases expand to more than {MAX_ALIAS_NODES} nodes (nested anchors that multiply, "
                    "as in a 'billion laughs'); write the repeated parts out, or share fewer",
                    event.start_mark,
                )
            if self._depth + depth > MAX_YAML_DEPTH:
                raise _AliasLimit(f"alias *{event.anchor} nests deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _AliasLimit(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.pop()

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """How many nodes ``node`` stands for with its aliases expanded, and how deep it goes."""
        known = self._measured.get(id(node))
        if known is not None:
            return known
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        nodes, depth = 1, 0
        for child in children:
            child_nodes, child_depth = self._measure(child)
            nodes += child_nodes
            depth = max(depth, child_depth)
        self._measured[id(node)] = (nodes, depth + 1)
        return nodes, depth + 1


def _load_yaml(text: str, *, file: str, what: str | None = None) -> Any:
    """``text`` parsed with aliases bounded; a ConfigError naming ``file`` (and ``what``,
    an environment variable) on any problem. Aliased parts come back as separate copies,
    so an override of one place does not change the others."""
    loader: _BoundedLoader | None = None
    try:
        # inside the try: the reader already refuses characters YAML forbids (a form feed)
        loader = _BoundedLoader(text)
        return _unshare(loader.get_single_data())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        if what is not None:
            at = f" ({where})" if where else ""
            raise ConfigError(f"{what}: not valid YAML{at}: {problem}", file=file) from None
        raise ConfigError(f"not valid YAML: {problem}", file=file, path=where) from None
    except (ValueError, OverflowError) as exc:
        # a scalar YAML resolves to a type it cannot hold: `0000-00-00` is a timestamp of year 0
        prefix = f"{what}: " if what is not None else ""
        raise ConfigError(f"{prefix}not valid YAML: a value cannot be read ({exc})", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


def _unshare(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], file: str) -> None:
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        path = [p for p in var[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node: Any = raw
        for i, part in enumerate(path):
            if not isinstance(node, dict):
                break
            key = _match_key(node, part)
            if i == len(path) - 1:
                node[key] = _load_yaml(value, file=file, what=var) if value.strip() else ""
            else:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]


def _match_key(node: dict[str, Any], part: str) -> str:
    wanted = part.lower().replace("-", "_")
    for existing in node:
        if isinstance(existing, str) and existing.lower().replace("-", "_") == wanted:
            return existing
    return part.lower()


#: what a reference stands for in a config loaded with ``secrets=False`` when it cannot be
#: resolved: base64 of 24 bytes, so a connector that checks a secret's form (a webhook's
#: ``whsec_`` key, which may leave its prefix out) accepts it like a real one
UNRESOLVED_SECRET = "unresolvedSecretPlaceholder00000"  # noqa: S105 - a placeholder, not a secret


class _Resolver:
    """Replaces ``${...}`` references with what they refer to. A reference that cannot be
    resolved is a problem (collected, so the rest of the file is still checked), or with
    ``lenient`` outside ``state``, :data:`UNRESOLVED_SECRET`."""

    def __init__(self, env: Mapping[str, str], file: str, problems: list[ConfigError], *, lenient: bool) -> None:
        self.env = env
        self.file = file
        self.problems = problems
        self.lenient = lenient

    def resolve(
        self, value: Any, path: tuple[str, ...], referenced: set[tuple[str, ...]], unresolved: set[tuple[str, ...]]
    ) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v, (*path, str(k)), referenced, unresolved) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, (*path, str(i)), referenced, unresolved) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        referenced.add(path)
        where = ".".join(path)
        lenient = self.lenient and path[:1] != ("state",)

        def replace(match: re.Match[str]) -> str:
            try:
                return self._one(match["kind"] or "env", match["name"].strip(), where)
            except ConfigError as exc:
                if not lenient or isinstance(exc, _BadSecret):
                    self.problems.append(exc)
                unresolved.add(path)
                return UNRESOLVED_SECRET

        return _REF.sub(replace, value)

    def _one(self, kind: str, name: str, where: str) -> str:
        file, env = self.file, self.env
        if kind == "env":
            if name not in env:
                raise ConfigError(f"refers to environment variable {name}, which is not set", file=file, path=where)
            secret = env[name]
            source = f"environment variable {name}"
        elif kind == "credential":
            directory = env.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"refers to credential {name!r} but $CREDENTIALS_DIRECTORY is not set "
                    "(systemd sets it for units with LoadCredential=)",
                    file=file,
                    path=where,
                )
            secret = _read_secret_file(Path(directory) / name, file, where)
            source = f"credential {name!r}"
        else:
            secret = _read_secret_file(Path(name), file, where)
            source = f"file {name}"
        register_secret(secret)
        problem = _control_character(secret)
        if problem:
            raise _BadSecret(f"{source} holds {problem}; a referenced value may not", file=file, path=where)
        return secret


class _BadSecret(ConfigError):
    """A referenced value that is there but unusable: a problem even where references may stay unresolved."""


def _read_secret_file(path: Path, file: str, where: str) -> str:
    """The file's text less one final line ending (``echo KEY > file`` and systemd-creds
    write one); any other control character stays, for the caller to refuse."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}", file=file, path=where) from None
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path} is not UTF-8 text", file=file, path=where) from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


_LINE_BREAKS = {"\n": "a line feed", "\r": "a carriage return"}


def _control_character(value: str) -> str | None:
    """What is wrong with a secret holding a control character, without quoting it: a
    header refuses it, and the error that says so would carry the whole secret."""
    for i, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            what = _LINE_BREAKS.get(char, f"U+{ord(char):04X}")
            at = "at its end" if i == len(value) - 1 else "at its start" if i == 0 else "inside"
            return f"a control character ({what} {at})"
    return None


def _config_errors(
    exc: ValidationError, file: str, prefix: tuple[str, ...], model: type[BaseModel]
) -> list[ConfigError]:
    """One ConfigError per problem pydantic found; an unknown key gets the closest known one."""
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        # pydantic reports the alias 'from' as written; keep the user's spelling
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], _fields_at(model, loc[:-1])) if loc else ""
            msg = f"unknown key{hint or ' (check the spelling; see config/ferryman.example.yaml)'}"
        elif error["type"] == "missing":
            msg = "required key is missing"
        problems.append(ConfigError(msg, file=file, path=".".join([*prefix, *loc]) or None))
    return problems


def _fields_at(model: Any, loc: list[str]) -> list[str]:
    """The keys the model allows at ``loc`` (names and aliases), following fields, dict
    values and list items; empty where that cannot be told (a union of models, Any)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) or next(
                (f for f in current.model_fields.values() if f.alias == part), None
            )
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def _check_names(config: FerrymanConfig, file: str, problems: list[ConfigError]) -> None:
    for section in ("systems", "pipelines"):
        for name in getattr(config, section):
            if not _NAME.match(name):
                problems.append(
                    ConfigError("names may use letters, digits, '-' and '_' only", file=file, path=f"{section}.{name}")
                )


def _validate_system(
    name: str, system: SystemConfig, file: str, referenced: set[tuple[str, ...]], problems: list[ConfigError]
) -> Any:
    """The system's connector options; ``None`` (its problems added to ``problems``) for an
    unknown connector or invalid options."""
    from ferryman import plugins

    try:
        cls = plugins.connector_class(system.connector)
    except KeyError as exc:
        hint = did_you_mean(system.connector, plugins.connectors())
        problems.append(ConfigError(f"{exc.args[0]}{hint}", file=file, path=f"systems.{name}.connector"))
        return None
    extra = dict(system.model_extra or {})
    try:
        options = cls.Options.model_validate(extra)
    except ValidationError as exc:
        problems.extend(_config_errors(exc, file, ("systems", name), cls.Options))
        return None
    _check_secret_literals(options, ("systems", name), file, referenced, problems)
    return options


def _check_secret_literals(
    model: BaseModel,
    path: tuple[str, ...],
    file: str,
    referenced: set[tuple[str, ...]],
    problems: list[ConfigError],
) -> None:
    """A Secret field must have come from a reference (or an environment override)."""
    for field_name, value in model:
        where = (*path, field_name)
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
            problem = _control_character(value.get_secret_value())
            if problem:  # an environment override is not checked where references are
                problems.append(ConfigError(f"holds {problem}; secrets may not", file=file, path=".".join(where)))
            elif not any(where[: len(r)] == r for r in referenced) and not _from_env(where):
                problems.append(
                    ConfigError(
                        "secrets must be references, not literals: use ${ENV_NAME} or ${credential:NAME}",
                        file=file,
                        path=".".join(where),
                    )
                )
        elif isinstance(value, BaseModel) and value is not model:
            _check_secret_literals(value, where, file, referenced, problems)


def _from_env(where: tuple[str, ...]) -> bool:
    wanted = ENV_PREFIX + "__".join(p.upper().replace("-", "_") for p in where)
    return any(k.upper().replace("-", "_") == wanted for k in os.environ)


def _check_pipelines(config: FerrymanConfig, file: str, problems: list[ConfigError], *, streams: bool = True) -> None:
    """References, one writer per target and, with ``streams``, each stream's capabilities;
    every problem of every pipeline is collected."""
    written_by: dict[str, str] = {}
    for name, pipeline in config.pipelines.items():
        refs = [("from", pipeline.source)] + [(f"to.{i}", t) for i, t in enumerate(pipeline.to)]
        for key, ref in refs:
            try:
                _check_ref_of(config, name, pipeline, key, ref, written_by, file, streams=streams)
            except ConfigError as exc:
                problems.append(exc)
        try:
            if pipeline.references and streams:
                _check_references(config, name, pipeline, file)
            if pipeline.direction == "both" and streams:
                _check_two_way(config, name, pipeline, file)
        except ConfigError as exc:
            problems.append(exc)


def _check_ref_of(
    config: FerrymanConfig,
    name: str,
    pipeline: PipelineConfig,
    key: str,
    ref: str,
    written_by: dict[str, str],
    file: str,
    *,
    streams: bool,
) -> None:
    system, stream = ref.split(".", 1)
    where = f"pipelines.{name}.{key}"
    if system not in config.systems:
        known = ", ".join(sorted(config.systems)) or "none"
        hint = did_you_mean(system, config.systems)
        raise ConfigError(f"unknown system {system!r}{hint} (systems: {known})", file=file, path=where)
    known_streams = _streams_of(config, system) if streams else None
    if known_streams is not None and stream not in known_streams:
        raise _no_stream(system, stream, known_streams, file, where)
    if known_streams is not None:
        from ferryman.connector import Capability

        info = known_streams[stream]
        needed = Capability.READ if key == "from" else Capability.CREATE
        if not info.can(needed):
            raise ConfigError(
                f"{ref} cannot be {'read' if key == 'from' else 'written'} by connector "
                f"{config.systems[system].connector!r}",
                file=file,
                path=where,
            )
    if key != "from":
        if ref in written_by and written_by[ref] != name and pipeline.direction == "one_way":
            raise ConfigError(
                f"{ref} is already the target of pipeline {written_by[ref]!r}; one writer per target",
                file=file,
                path=where,
            )
        written_by[ref] = name


def _check_two_way(config: FerrymanConfig, name: str, pipeline: PipelineConfig, file: str) -> None:
    from ferryman.connector import Capability

    for ref in (pipeline.source, pipeline.to[0]):
        if ref.split(".", 1)[0] not in config.systems:
            continue  # reported as an unknown system
        sides = _streams_of(config, ref.split(".", 1)[0])
        info = sides.get(ref.split(".", 1)[1]) if sides else None
        if info is not None and not (info.can(Capability.READ) and info.can(Capability.CREATE)):
            raise ConfigError(
                f"{ref} must be readable and writable for a two-way pipeline",
                file=file,
                path=f"pipelines.{name}.direction",
            )


def _check_references(config: FerrymanConfig, name: str, pipeline: PipelineConfig, file: str) -> None:
    """Each translated field exists on the target records; each referenced stream exists."""
    from ferryman.mapping import IDENTITY

    src_system = pipeline.source_ref()[0]
    for field_name, rule in pipeline.references.items():
        where = f"pipelines.{name}.references.{field_name}"
        for system, stream in pipeline.target_refs():
            known = _streams_of(config, system)
            if known is None or stream not in known:
                continue
            record = known[stream].record_type
            if field_name not in record.model_fields or field_name in IDENTITY:
                raise ConfigError(
                    f"{record.kind} records have no field {field_name!r} to translate", file=file, path=where
                )
        sides = [(src_system, rule.source)] + [(system, rule.target_stream()) for system, _ in pipeline.target_refs()]
        for system, stream in sides:
            known = _streams_of(config, system)
            if known is not None and stream not in known:
                raise _no_stream(system, stream, known, file, where)


def _no_stream(system: str, stream: str, known: Mapping[str, Any], file: str, where: str) -> ConfigError:
    return ConfigError(
        f"system {system!r} has no stream {stream!r}{did_you_mean(stream, known)} "
        f"(streams: {', '.join(sorted(known))})",
        file=file,
        path=where,
    )


def _streams_of(config: FerrymanConfig, system: str) -> dict[str, Any] | None:
    """The system's streams; ``None`` when that cannot be told (options that did not
    validate, already reported; streams that depend on more than the options)."""
    from ferryman import plugins
    from ferryman.connector import SystemContext

    if system not in config.systems or system not in config._options:
        return None
    cls = plugins.connector_class(config.systems[system].connector)
    try:
        return dict(cls(SystemContext(system, config.system_options(system))).streams())
    except NotImplementedError:
        return None
