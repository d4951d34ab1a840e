"""``/metrics`` as a Prometheus server reads it: from a real ``ferryman run`` after syncs,
parsed by prometheus_client's own parser. Every family has HELP and TYPE; the build, the
process, open dead letters, the last success and the two lag metrics are there, taken
from the state database (so a restarted daemon knows them); a quiet source that is fully
synced shows a source lag of 0, and only the age of the last success grows.

Also: every metric name the code uses is declared with its HELP (so none can reach
``/metrics`` without it) and documented in the README; ``control.metrics_public`` serves
``/metrics`` without the token on a Unix socket or loopback, and nowhere else."""

from __future__ import annotations

import ast
import os
import platform
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import ferryman
from ferryman import metrics
from ferryman.config import ControlConfig
from ferryman.daemon._metrics import RunDurations, render
from ferryman.http import HttpRegistry
from ferryman.state import StateStore
from tests.conftest import free_port, run_cli
from tests.daemon.support import Daemon, csv_system, short_dir, write_config, write_tickets

ROOT = Path(__file__).resolve().parents[2]
NEWEST_TICKET = 1767225699.0  # 2026-01-01T00:01:39Z: the updated_at of T000099, the cursor after a sync

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: Daemon, token: str | None = "auto") -> tuple[str, Samples]:
    """The raw text and its samples, as prometheus_client's parser reads them."""
    with daemon.client(token=token) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have {sorted(n for n, _ in samples)}"
    return samples[key]


def last_ok_run(store_url: str, pipeline: str) -> dict[str, object]:
    store = StateStore(store_url)
    try:
        return next(r for r in store.runs(pipeline, limit=100) if r["outcome"] == "ok")
    finally:
        store.close()


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon started over a state database that a one-off ``ferryman sync`` filled: 100
    tickets delivered and one line of the CSV dead-lettered (its date is not a date)."""
    tmp = tmp_path_factory.mktemp("metrics")
    write_tickets(tmp / "in" / "tickets.csv", 100)
    with (tmp / "in" / "tickets.csv").open("a", encoding="utf-8") as fh:
        fh.write("T999999,not-a-date,broken,open,x@example.com\n")
    config = write_config(
        tmp / "ferryman.yaml",
        state_url=f"sqlite:///{tmp / 'state' / 'ferryman.db'}",
        systems={"inbox": csv_system(tmp / "in"), "out": csv_system(tmp / "out")},
        pipelines={"small": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 50}},
        listen=f"127.0.0.1:{free_port()}",
    )
    result = run_cli("--config", str(config), "sync", "small")
    run = last_ok_run(f"sqlite:///{tmp / 'state' / 'ferryman.db'}", "small")
    assert (run["created"], run["dead_lettered"]) == (100, 1), result.stderr
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        yield daemon
        code, _ = daemon.stop()
        assert code == 0, daemon.log_text()
    finally:
        daemon.kill()


def test_at_start_dead_letters_last_success_and_lags_come_from_the_state_database(synced: Daemon) -> None:
    """The first scrape of a daemon that ran nothing yet (the module's first test): what
    the one-off sync left in the state database."""
    runs = synced.runs("small")
    assert len(runs) == 1 and runs[0]["created"] == 100, "only the one-off sync ran"
    ended = runs[0]["ended_at"].timestamp()
    _, samples = scrape(synced)
    assert value(samples, "ferryman_last_success_timestamp_seconds", pipeline="small") == pytest.approx(ended)
    # it delivered records up to 2026-01-01T00:01:39Z: that far behind the source when it ended
    lag = value(samples, "ferryman_source_lag_seconds", pipeline="small")
    assert lag == pytest.approx(ended - NEWEST_TICKET, abs=1e-3)
    age = value(samples, "ferryman_last_success_age_seconds", pipeline="small")
    assert 0 <= age <= time.time() - ended + 1
    assert value(samples, "ferryman_dead_letters_open", pipeline="small") == 1
    assert value(samples, "ferryman_state_store_up") == 1
    assert value(samples, "ferryman_pipeline_running", pipeline="small") == 0


def test_every_family_has_help_and_type_and_a_declaration(synced: Daemon) -> None:
    with synced.client() as client:
        result = client.post("/v1/pipelines/small/trigger", params={"wait": "true"}).json()
    assert result["outcome"] == "ok", result
    text, samples = scrape(synced)
    helps = re.findall(r"^# HELP (\S+) (.*)$", text, flags=re.M)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M)
    assert [n for n, _ in helps] == [n for n, _ in types], "HELP and TYPE, once each, for the same families"
    assert all(h.strip() for _, h in helps), "no empty HELP"
    assert len(types) == len(set(types))
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), f"{family.name}: {family.type}"
    declared = {n for n, _ in types}
    for name, _labels in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
        assert base in declared, f"sample {name} belongs to no declared family"
        assert base in metrics.FAMILIES
    # what the run itself counted is there too
    assert value(samples, "ferryman_runs_total", outcome="ok", pipeline="small") >= 1
    assert value(samples, "ferryman_run_duration_seconds_count", pipeline="small") >= 1


def test_build_info_and_process_metrics(synced: Daemon) -> None:
    _, samples = scrape(synced)
    assert value(samples, "ferryman_build_info", version=ferryman.__version__, python=platform.python_version()) == 1
    started = value(samples, "process_start_time_seconds")
    # the kernel's start time of the daemon's own process, not the test's
    stat = Path(f"/proc/{synced.pid}/stat").read_text().rsplit(")", 1)[1].split()
    btime = next(float(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime "))
    assert started == pytest.approx(float(stat[19]) / os.sysconf("SC_CLK_TCK") + btime, abs=0.02)
    assert time.time() - 600 < started <= time.time()
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 10 * 2**20  # Python with aiohttp and SQLAlchemy
    open_fds = value(samples, "process_open_fds")
    assert 3 < open_fds < value(samples, "process_max_fds")
    assert open_fds == pytest.approx(len(os.listdir(f"/proc/{synced.pid}/fd")), abs=5)


def test_a_quiet_source_that_is_fully_synced_does_not_look_late(synced: Daemon) -> None:
    with synced.client() as client:
        result = client.post("/v1/pipelines/small/trigger", params={"wait": "true"}).json()
    assert result["outcome"] == "ok", result
    assert sum(result["counts"][k] for k in ("created", "updated", "deleted")) == 0, "nothing new at the source"
    run = last_ok_run(synced.state_url, "small")
    ended = run["ended_at"].timestamp()  # type: ignore[attr-defined]

    _, first = scrape(synced)
    first_at = time.time()
    time.sleep(1.5)
    _, second = scrape(synced)
    second_at = time.time()

    for samples in (first, second):
        assert value(samples, "ferryman_source_lag_seconds", pipeline="small") == 0
        assert value(samples, "ferryman_last_success_timestamp_seconds", pipeline="small") == pytest.approx(ended)
        assert value(samples, "ferryman_dead_letters_open", pipeline="small") == 1, "the bad line is still open"
    age1 = value(first, "ferryman_last_success_age_seconds", pipeline="small")
    age2 = value(second, "ferryman_last_success_age_seconds", pipeline="small")
    assert 0 <= age1 <= first_at - ended + 0.5
    assert 1.4 <= age2 - age1 <= second_at - first_at + 0.5, "only the age grows, as the clock does"
    # the old lag (now minus the cursor's newest update) grows all the same: why it is deprecated
    old1 = value(first, "ferryman_cursor_lag_seconds", pipeline="small")
    assert value(second, "ferryman_cursor_lag_seconds", pipeline="small") - old1 >= 1.4


def test_every_metric_the_code_uses_is_declared_with_help_and_documented() -> None:
    used: dict[str, str] = {}
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("inc", "set_gauge", "_add")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                used[node.args[0].value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    used.update(dict.fromkeys(HttpRegistry().snapshot(), "ferryman.http.HttpMetrics"))
    assert {"ferryman_runs_total", "ferryman_http_requests_total", "ferryman_pipeline_running"} <= set(used)
    for name, where in sorted(used.items()):
        assert name in metrics.FAMILIES, f"{name} ({where}) is not declared in ferryman.metrics"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    undocumented = [n for n in metrics.FAMILIES if f"`{n}" not in readme]
    assert not undocumented, f"README's metrics section does not mention {undocumented}"


def test_an_undeclared_metric_is_refused_where_it_is_used() -> None:
    with pytest.raises(metrics.UndeclaredMetric, match="not declared"):
        metrics.inc("ferryman_things_total", pipeline="p")
    with pytest.raises(metrics.UndeclaredMetric, match="counter, not a gauge"):
        metrics.set_gauge("ferryman_runs_total", 1)
    with pytest.raises(metrics.UndeclaredMetric, match="no HELP"):
        metrics.render(extra={"ferryman_things_total": {(): 1.0}})
    with pytest.raises(metrics.UndeclaredMetric, match="HELP text is empty"):
        metrics.declare("ferryman_other_total", "counter", "  ")
    assert "ferryman_other_total" not in metrics.FAMILIES
    metrics.inc("ferryman_runs_total", pipeline="p", outcome="ok")
    assert "# HELP ferryman_runs_total Pipeline runs" in metrics.render()


# -- control.metrics_public ------------------------------------------------------------------


def public_config(tmp: Path, listen: str, *, token: str | None = None) -> Path:
    write_tickets(tmp / "in" / "tickets.csv", 1)
    config = write_config(
        tmp / "ferryman.yaml",
        state_url=f"sqlite:///{tmp / 'state' / 'ferryman.db'}",
        systems={"inbox": csv_system(tmp / "in"), "out": csv_system(tmp / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets"}},
        listen=listen,
        token=token,
    )
    data = yaml.safe_load(config.read_text())
    data["control"]["metrics_public"] = True
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


@pytest.mark.parametrize("where", ["unix", "loopback"])
def test_metrics_public_serves_metrics_without_the_token_and_nothing_else(tmp_path: Path, where: str) -> None:
    sockets = short_dir()
    listen = f"unix:{sockets / 'control.sock'}" if where == "unix" else f"127.0.0.1:{free_port()}"
    # on the socket, a configured token (else its file mode is the only guard)
    config = public_config(tmp_path, listen, token="${CONTROL_TOKEN}" if where == "unix" else None)
    daemon = Daemon(config, env={"CONTROL_TOKEN": "s3cret-control-token"})
    try:
        daemon.wait_ready()
        text, samples = scrape(daemon, token=None)
        assert value(samples, "ferryman_dead_letters_open", pipeline="p") == 0
        assert "s3cret" not in text
        assert daemon.get("/v1/status", token=None).status_code == 401, "only /metrics is public"
        with daemon.client(token=None) as client:
            assert client.post("/v1/pipelines/p/trigger").status_code == 401
        assert daemon.runs("p") == []
        token = "s3cret-control-token" if where == "unix" else daemon.token()
        assert daemon.get("/v1/status", token=token).status_code == 200
        code, _ = daemon.stop()
        assert code == 0, daemon.log_text()
    finally:
        daemon.kill()


def test_without_metrics_public_the_token_guards_metrics_on_the_socket_too(tmp_path: Path) -> None:
    config = public_config(tmp_path, f"unix:{short_dir() / 'control.sock'}", token="${CONTROL_TOKEN}")
    data = yaml.safe_load(config.read_text())
    data["control"]["metrics_public"] = False
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    daemon = Daemon(config, env={"CONTROL_TOKEN": "s3cret-control-token"})
    try:
        daemon.wait_ready()
        assert daemon.get("/metrics", token=None).status_code == 401
        assert daemon.get("/metrics", token="s3cret-control-token").status_code == 200
    finally:
        daemon.kill()


@pytest.mark.parametrize("listen", ["10.0.0.5:8765", "0.0.0.0:8765", "[2001:db8::1]:8765", "ferryman.example:80"])
def test_metrics_public_elsewhere_than_loopback_is_refused_by_the_model(listen: str) -> None:
    with pytest.raises(ValueError, match=r"control\.listen must be a loopback address"):
        ControlConfig.model_validate({"listen": listen, "metrics_public": True})
    assert not ControlConfig.model_validate({"listen": listen}).metrics_public


@pytest.mark.parametrize("listen", ["10.0.0.5:8765", "[2001:db8::1]:8765"])
def test_metrics_public_elsewhere_than_loopback_is_a_config_error(tmp_path: Path, listen: str) -> None:
    config = public_config(tmp_path, listen)
    result = run_cli("--config", str(config), "run")
    assert result.returncode == 78, result.stderr
    assert "control.metrics_public" in result.stderr
    assert "loopback" in result.stderr and listen in result.stderr
    assert not (tmp_path / "state" / "ferryman.db").exists(), "refused before the state database"


@pytest.mark.parametrize("listen", ["127.0.0.1:8765", "[::1]:8765", "localhost:8765", "unix:/run/ferryman/c.sock"])
def test_metrics_public_is_accepted_on_loopback_and_unix_sockets(listen: str) -> None:
    assert ControlConfig.model_validate({"listen": listen, "metrics_public": True}).metrics_public


def test_without_the_state_database_metrics_still_answer_and_say_so() -> None:
    class Away:
        def count_dead_letters(self) -> dict[str, int]:
            raise OSError("could not connect to server: Connection refused")

    text = render(RunDurations(), store=Away(), pipelines=["p"])
    samples = {
        (s.name, tuple(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert samples[("ferryman_state_store_up", ())] == 0
    assert (
        "ferryman_build_info",
        (("python", platform.python_version()), ("version", ferryman.__version__)),
    ) in samples
    assert samples[("process_open_fds", ())] > 0
    assert "ferryman_dead_letters_open" not in text and "ferryman_last_success" not in text


async def test_the_metrics_guard_follows_a_reload_of_metrics_public() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from ferryman.daemon._api import build_app

    class Controller:
        token = "s3cret-control-token"
        metrics_public = False

        async def metrics_text(self) -> str:
            return "# HELP x y\n# TYPE x gauge\nx 1\n"

    controller = Controller()
    client = TestClient(TestServer(build_app(controller)))
    await client.start_server()
    try:
        assert (await client.get("/metrics")).status == 401
        controller.metrics_public = True  # what a SIGHUP with the option switched on does
        response = await client.get("/metrics")
        assert response.status == 200 and "x 1" in await response.text()
        assert (await client.get("/v1/status")).status == 401
    finally:
        await client.close()


def test_open_conflict_journal_entries_are_a_state_gauge(tmp_path: Path) -> None:
    from ferryman.daemon._metrics import pipeline_gauges
    from ferryman.state import NewConflict, StateStore

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    entry = NewConflict("crm.contacts", "from", "1", "1", "newest_wins", "both changed", {"phone": "a"}, {"phone": "b"})
    store.history.add("p", None, [], [entry, entry])
    store.history.add("gone", None, [], [entry])  # a pipeline no longer configured still shows
    gauges = pipeline_gauges(store, ["p", "q"])["ferryman_conflicts_open"]
    assert gauges == {(("pipeline", "p"),): 2.0, (("pipeline", "q"),): 0.0, (("pipeline", "gone"),): 1.0}
    [first, _] = store.history.conflicts("p")
    assert store.history.mark_restored(first.id)
    assert pipeline_gauges(store, ["p"])["ferryman_conflicts_open"][(("pipeline", "p"),)] == 1.0
