"""Alerts and sync warnings, end to end: real DuckDB syncs on a real Dagster instance, the alert channels
served by local fakes built from each service's documented format.

- Slack incoming webhooks: ``POST`` of ``{"text": ...}``, ``200 ok``; a message without text is ``400
  no_text``, an unknown webhook ``404 no_service`` (https://api.slack.com/messaging/webhooks).
- Teams Workflows webhooks: ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", ...}}]}``, ``202
  Accepted``; anything else ``400`` (https://learn.microsoft.com/en-us/microsoftteams/platform/
  webhooks-and-connectors/how-to/add-incoming-webhook).
- PagerDuty Events API v2: ``{"routing_key" (32 characters), "event_action": trigger|acknowledge|resolve,
  "dedup_key", "payload": {"summary", "source", "severity"}}``, ``202 {"status": "success", "message":
  "Event processed", "dedup_key"}``; else ``400 {"status": "invalid event", "message": "Event object is
  invalid", "errors": [...]}`` (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).
- A plain webhook records its JSON body; e-mail goes to a local SMTP server (aiosmtpd) that requires AUTH.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import threading
from collections.abc import Iterator
from email import message_from_string, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorStatus
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from dinmo_dagster import alerts, cli, sync
from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.emulator import free_port
from dinmo_dagster.names import (
    FAILURE_SENSOR,
    OWNER_TAG,
    TRIGGER_TAG,
    VALIDATION_SENSOR,
    job_name,
    partitions_name,
)
from dinmo_dagster.sensors.alerts import ALERTED_TAG, ALERTS_SENSOR

# the local SMTP server takes AUTH without TLS (the alert sends credentials to a loopback relay only)
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SLACK_PATH = "/services/T0001/B0001/slackSecretPath123"
TEAMS_PATH = "/workflows/teamsSecretPath456"
HOOK_PATH = "/hooks/alertSecretPath789"
PD_KEY = "R0UT1NGK3YR0UT1NGK3YR0UT1NGK3Y01"  # 32 characters
SMTP_USER, SMTP_PASSWORD = "dinmo-mailer", "smtpS3cretPassw0rd"
SECRETS = ("slackSecretPath123", "teamsSecretPath456", "alertSecretPath789", PD_KEY, SMTP_PASSWORD)

CUSTOMERS = """
create schema if not exists raw;
create or replace table raw.customers as
select * from (values (1, 'a@x.io', 500.0), (2, 'b@x.io', 50.0), (3, 'c@x.io', 900.0)) as t(customer_id, email, ltv);
"""


# ---------------------------------------------------------------------------------------------------------
# the channels' fakes
# ---------------------------------------------------------------------------------------------------------


class Channels(ThreadingHTTPServer):
    """Slack, Teams, PagerDuty and a plain webhook on one local port; ``posts`` records what each took."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.posts: list[tuple[str, Any]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def of(self, service: str) -> list[Any]:
        return [body for s, body in self.posts if s == service]


class _Handler(BaseHTTPRequestHandler):
    server: Channels

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.path.startswith("/services/"):
            return self._slack(body)
        if self.path.startswith("/workflows/"):
            return self._teams(body)
        if self.path == "/pagerduty/v2/enqueue":
            return self._pagerduty(body)
        if self.path == HOOK_PATH and isinstance(body, dict):
            self.server.posts.append(("webhook", body))
            return self._answer(200, {"ok": True})
        return self._answer(404, "not found")

    def _slack(self, body: Any) -> None:
        if self.path != SLACK_PATH:
            return self._answer(404, "no_service")
        if not isinstance(body, dict):
            return self._answer(400, "invalid_payload")
        if not (body.get("text") or body.get("blocks") or body.get("attachments")):
            return self._answer(400, "no_text")
        self.server.posts.append(("slack", body))
        return self._answer(200, "ok")

    def _teams(self, body: Any) -> None:
        if self.path != TEAMS_PATH:
            return self._answer(404, {"error": {"code": "WorkflowNotFound"}})
        attachments = body.get("attachments") if isinstance(body, dict) else None
        ok = (
            isinstance(body, dict)
            and body.get("type") == "message"
            and isinstance(attachments, list)
            and attachments
            and all(
                a.get("contentType") == "application/vnd.microsoft.card.adaptive"
                and a.get("content", {}).get("type") == "AdaptiveCard"
                for a in attachments
            )
        )
        if not ok:
            return self._answer(
                400,
                {
                    "error": {
                        "code": "InvalidRequestContent",
                        "message": "The message is not an Adaptive Card",
                    }
                },
            )
        self.server.posts.append(("teams", body))
        return self._answer(202, "")

    def _pagerduty(self, body: Any) -> None:
        errors = []
        if not isinstance(body, dict):
            return self._answer(
                400,
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["Event object is not JSON"],
                },
            )
        if len(str(body.get("routing_key", ""))) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append(
                "'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' "
                "or 'resolve')"
            )
        if action == "trigger":
            payload = body.get("payload") or {}
            errors += [
                f"'payload.{k}' is missing or blank"
                for k in ("summary", "source", "severity")
                if not payload.get(k)
            ]
            if payload.get("severity") and payload["severity"] not in (
                "critical",
                "error",
                "warning",
                "info",
            ):
                errors.append(
                    "'payload.severity' is invalid (must be one of the following: 'critical', "
                    "'warning', 'error' or 'info')"
                )
            if len(str(payload.get("summary", ""))) > 1024:
                errors.append("'payload.summary' is too long (maximum is 1024 characters)")
        elif not body.get("dedup_key"):
            errors.append("'dedup_key' is missing or blank")
        if errors:
            return self._answer(
                400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            )
        self.server.posts.append(("pagerduty", body))
        return self._answer(
            202, {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")}
        )


class _Mailbox:
    """An SMTP server's handler that keeps each message; the server requires AUTH as SMTP_USER."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_string(envelope.content.decode(), policy=policy.default))
        return "250 OK"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok)


@pytest.fixture
def channels() -> Iterator[Channels]:
    server = Channels()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    box, port = _Mailbox(), free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    yield box, port
    controller.stop()


# ---------------------------------------------------------------------------------------------------------
# the project
# ---------------------------------------------------------------------------------------------------------


def _project_yaml(smtp_port: int, pd_url: str, vip_extra: str = "") -> str:
    return textwrap.dedent(f"""
        sources:
          warehouse: {{type: duckdb, path: warehouse.duckdb}}
        models:
          customers: {{source: warehouse, table: raw.customers, primary_key: customer_id}}
        segments:
          vip: {{model: customers, sql: "select * from {{{{ model }}}} where ltv > 100"}}
        destinations:
          out: {{type: local, path: out}}
        alerts:
          to:
            - slack: {{webhook_url: {{env: TEST_SLACK_WEBHOOK_URL}}}}
            - webhook: {{url: {{env: TEST_ALERT_WEBHOOK_URL}}}}
            - email: {{smtp_host: 127.0.0.1, smtp_port: {smtp_port}, from: dinmo@acme.test, to: [data@acme.test],
                       username: {{env: TEST_SMTP_USER}}, password: {{env: TEST_SMTP_PASSWORD}}}}
            - teams: {{webhook_url: {{env: TEST_TEAMS_WEBHOOK_URL}}}}
            - pagerduty: {{routing_key: {{env: TEST_PAGERDUTY_KEY}}, url: "{pd_url}"}}
        activations:
          vip_daily:
            segment: vip
            destination: out
            file_name: vip
            schedule: {{every: 15 minutes}}
            alerts: {{to: [{{slack: {{webhook_url: {{env: TEST_SLACK_WEBHOOK_URL}}}}}}]}}
        {textwrap.indent(vip_extra, "    ")}
          vip_all:
            segment: vip
            destination: out
            file_name: vip_all
          vip_broken_channels:
            segment: vip
            destination: out
            file_name: vip_broken
            alerts:
              on: [warning]
              to:
                - webhook: {{url: {{env: TEST_DEAD_WEBHOOK_URL}}}}
                - pagerduty: {{routing_key: {{env: TEST_SHORT_PAGERDUTY_KEY}}, url: "{pd_url}"}}
                - slack: {{webhook_url: {{env: TEST_SLACK_WEBHOOK_URL}}}}
        """)


@pytest.fixture
def project_dir(
    tmp_path: Path, channels: Channels, mailbox: tuple[_Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> Path:
    d = tmp_path / "project"
    (d / "out").mkdir(parents=True)
    (d / "dinmo.yaml").write_text(_project_yaml(mailbox[1], f"{channels.url}/pagerduty/v2/enqueue"))
    sql(d, CUSTOMERS)
    dead = free_port()  # nothing listens there: the channel fails
    for name, value in {
        "TEST_SLACK_WEBHOOK_URL": channels.url + SLACK_PATH,
        "TEST_ALERT_WEBHOOK_URL": channels.url + HOOK_PATH,
        "TEST_TEAMS_WEBHOOK_URL": channels.url + TEAMS_PATH,
        "TEST_PAGERDUTY_KEY": PD_KEY,
        "TEST_SHORT_PAGERDUTY_KEY": PD_KEY[:31],
        "TEST_SMTP_USER": SMTP_USER,
        "TEST_SMTP_PASSWORD": SMTP_PASSWORD,
        "TEST_DEAD_WEBHOOK_URL": f"http://127.0.0.1:{dead}{HOOK_PATH}",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }.items():
        monkeypatch.setenv(name, value)
    return d


def sql(project_dir: Path, statement: str) -> None:
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(statement)


def _all_text(channels: Channels, box: _Mailbox) -> str:
    return json.dumps(channels.posts) + "".join(m.as_string() for m in box.messages)


def _failed_run_context(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    activation: str,
    tags: dict[str, str] | None = None,
    sensor_name: str = ALERTS_SENSOR,
) -> dg.RunFailureSensorContext:
    """A failed sync run of ``activation`` (as the UI or a schedule launches it) and the context the
    daemon gives a run-failure sensor for it."""
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(partitions_name(activation), [key])
    result = defs.resolve_job_def(job_name(activation)).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False, tags=tags
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    [event] = [
        e.dagster_event for e in instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)
    ]
    return dg.build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event,
    ).for_run_failure()


# ---------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------


def test_a_failed_dinmo_sync_alerts_every_channel_once_in_its_format(
    project_dir: Path, channels: Channels, mailbox: tuple[_Mailbox, int]
) -> None:
    box, _ = mailbox
    project = load_project(project_dir)
    sql(project_dir, "drop table raw.customers")
    out = cli.sync_activation(project, "vip_all")
    assert not out.success and out.alerted == ["slack", "webhook", "email", "teams", "pagerduty"], (
        out.warnings
    )
    cause = out.error
    assert "raw.customers" in cause
    line = f"[dinmo] failure: activation 'vip_all', run {out.run_id}: {' '.join(cause.split())}"
    assert channels.of("slack") == [{"text": line}]
    assert channels.of("webhook") == [
        {
            "activation": "vip_all",
            "event": "failure",
            "run_id": out.run_id,
            "message": line,
            "severity": "error",
        }
    ]
    assert channels.of("teams") == [
        {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "type": "AdaptiveCard",
                        "version": "1.5",
                        "body": [{"type": "TextBlock", "text": line, "wrap": True}],
                    },
                }
            ],
        }
    ]
    [pd] = channels.of("pagerduty")
    assert pd == {
        "routing_key": PD_KEY,
        "event_action": "trigger",
        "dedup_key": f"dinmo/vip_all/failure/{out.run_id}",
        "payload": {
            "summary": line,
            "source": "dinmo-dagster",
            "severity": "error",
            "component": "vip_all",
            "group": "dinmo",
            "class": "failure",
            "custom_details": {
                "activation": "vip_all",
                "event": "failure",
                "run_id": out.run_id,
                "cause": cause,
            },
        },
    }
    [mail] = box.messages
    assert (mail["Subject"], mail["From"], mail["To"]) == (
        "[dinmo] failure: activation 'vip_all'",
        "dinmo@acme.test",
        "data@acme.test",
    )
    assert mail.get_content().strip() == line
    # the run says who alerted it; the run-failure sensor does not alert it a second time
    instance = dg.DagsterInstance.get()
    assert instance.get_run_by_id(out.run_id).tags[ALERTED_TAG] == "cli"
    defs = build_definitions(project)
    run = instance.get_run_by_id(out.run_id)
    [event] = [e.dagster_event for e in instance.all_logs(out.run_id, of_type=DagsterEventType.RUN_FAILURE)]
    defs.get_repository_def().get_sensor_def(ALERTS_SENSOR)(
        dg.build_run_status_sensor_context(
            sensor_name=ALERTS_SENSOR, dagster_instance=instance, dagster_run=run, dagster_event=event
        ).for_run_failure()
    )
    assert len(channels.posts) == 4 and len(box.messages) == 1
    assert not any(s in _all_text(channels, box) for s in SECRETS[:3])


def test_the_run_failure_sensor_alerts_runs_the_daemon_launched(
    project_dir: Path, channels: Channels, mailbox: tuple[_Mailbox, int]
) -> None:
    project = load_project(project_dir)
    defs = build_definitions(project)
    sensor = defs.get_repository_def().get_sensor_def(ALERTS_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    sql(project_dir, "drop table raw.customers")
    with dg.instance_for_test() as instance:
        context = _failed_run_context(instance, defs, "vip_daily", tags={TRIGGER_TAG: "schedule"})
        sensor(context)
        run_id = context.dagster_run.run_id
        [slack] = channels.of("slack")  # vip_daily's own channels: Slack only
        assert slack["text"].startswith(f"[dinmo] failure: activation 'vip_daily', run {run_id}: ")
        assert "raw.customers" in slack["text"] and channels.posts == [("slack", slack)]
        assert instance.get_run_by_id(run_id).tags[ALERTED_TAG] == "sensor"
        sensor(context)  # a second evaluation of the same failure sends nothing
        assert len(channels.posts) == 1
        # a `dinmo sync` run whose process lives is left to it: it alerts its own failure
        cli_run = _failed_run_context(
            instance, defs, "vip_daily", tags={TRIGGER_TAG: "cli", OWNER_TAG: sync.OWNER}
        )
        sensor(cli_run)
        assert (
            len(channels.posts) == 1
            and ALERTED_TAG not in instance.get_run_by_id(cli_run.dagster_run.run_id).tags
        )
        # ... and a killed one (its process gone) is alerted by the sensor
        gone = f"{sync.OWNER.rpartition(':')[0]}:999999999"
        dead = _failed_run_context(instance, defs, "vip_daily", tags={TRIGGER_TAG: "cli", OWNER_TAG: gone})
        sensor(dead)
        assert channels.of("slack")[1]["text"].startswith(
            f"[dinmo] failure: activation 'vip_daily', run {dead.dagster_run.run_id}: "
        )
        assert len(channels.posts) == 2


def test_sync_warnings_are_logged_recorded_alerted_and_block_when_asked(
    project_dir: Path, channels: Channels
) -> None:
    project = load_project(project_dir)
    assert cli.sync_activation(
        project, "vip_daily"
    ).success  # 2 records: the first sync has nothing to compare
    assert channels.posts == []
    sql(
        project_dir,
        "insert into raw.customers values (4, 'd@x.io', 200.0), (5, 'e@x.io', 300.0), (6, 'f@x.io', 400.0)",
    )
    grown = cli.sync_activation(project, "vip_daily")
    text = (
        "segment 'vip' has 5 records, 150.0% more than the 2 of the last sync; more than max_size_change_pct "
        "50%"
    )
    assert grown.success and grown.warnings == [f"activations/vip_daily: {text}"]
    assert grown.metadata["dinmo/warnings"] == [{"event": "size_change", "message": text}]
    assert channels.of("slack") == [
        {"text": f"[dinmo] size_change: activation 'vip_daily', run {grown.run_id}: {text}"}
    ]

    # 4 of 5 records leave: a size warning from the run, then the removal guard stops the sync
    sql(project_dir, "delete from raw.customers where customer_id <> 1")
    shrunk = cli.sync_activation(project, "vip_daily")
    assert not shrunk.success and "would remove 4 of 5 records (80.0%)" in shrunk.error
    texts = [p["text"] for p in channels.of("slack")[1:]]
    assert texts == [
        (
            f"[dinmo] size_change: activation 'vip_daily', run {shrunk.run_id}: segment 'vip' has 1 records, 80.0% "
            "fewer than the 5 of the last sync; more than max_size_change_pct 50%"
        ),
        f"[dinmo] failure (removal_guard): activation 'vip_daily', run {shrunk.run_id}: {shrunk.error}",
    ]

    # warnings_block: an empty segment fails the sync before anything is written
    (project_dir / "dinmo.yaml").write_text(
        _project_yaml(
            1025, f"{channels.url}/pagerduty/v2/enqueue", "warnings_block: [empty_segment, size_change]"
        )
    )
    blocked_project = load_project(project_dir)
    sql(project_dir, "delete from raw.customers")
    before = sorted(p.name for p in (project_dir / "out").iterdir())
    blocked = cli.sync_activation(blocked_project, "vip_daily")
    assert not blocked.success
    assert blocked.error == (
        "activation 'vip_daily': segment 'vip' is empty; nothing was written "
        "(activations.vip_daily.warnings_block names empty_segment). If this is expected, "
        "remove empty_segment from warnings_block"
    )
    assert sorted(p.name for p in (project_dir / "out").iterdir()) == before
    assert channels.of("slack")[-1] == {
        "text": f"[dinmo] failure (empty_segment): activation 'vip_daily', run {blocked.run_id}: {blocked.error}"
    }
    assert len(channels.posts) == 4


def test_pause_and_resume_by_the_validation_sensor_alert(
    project_dir: Path, channels: Channels, mailbox: tuple[_Mailbox, int], tmp_path: Path
) -> None:
    # vip_daily alerts to Slack only; PagerDuty hears about vip_daily through a project whose activation
    # keeps the project's channels
    yaml_text = (
        (project_dir / "dinmo.yaml")
        .read_text()
        .replace("    alerts: {to: [{slack: {webhook_url: {env: TEST_SLACK_WEBHOOK_URL}}}]}\n", "")
    )
    # and one failed sync is enough for dinmo_pause_after_failures to pause it
    (project_dir / "dinmo.yaml").write_text(yaml_text + "settings: {consecutive_failures_to_pause: 1}\n")
    module = tmp_path / "dinmo_defs.py"
    module.write_text(
        f"from dinmo_dagster.config import load_project\n"
        f"from dinmo_dagster.definitions import build_definitions\n"
        f"defs = build_definitions(load_project({str(project_dir)!r}))\n"
    )
    project = load_project(project_dir)
    repo_def = build_definitions(project).get_repository_def()
    sensor_def = repo_def.get_sensor_def(VALIDATION_SENSOR)
    resources = repo_def.get_top_level_resources()
    with (
        dg.instance_for_test() as instance,
        in_process_test_workspace(
            instance, LoadableTargetOrigin(python_file=str(module), working_directory=str(tmp_path))
        ) as ctx,
    ):
        entry = next(iter(ctx.get_code_location_entries().values()))
        remote_repo = entry.code_location.get_repository(repo_def.name)
        schedule = remote_repo.get_schedule("vip_daily_schedule")

        def evaluate(cursor: str | None) -> Any:
            with dg.SensorEvaluationContext(
                instance_ref=None,
                instance=instance,
                cursor=cursor,
                repository_name=repo_def.name,
                repository_def=repo_def,
                sensor_name=VALIDATION_SENSOR,
                code_location_origin=remote_repo.get_remote_origin().code_location_origin,
                resources={k: resources[k] for k in sensor_def.required_resource_keys},
            ) as context:
                return sensor_def.evaluate_tick(context)

        def status() -> InstigatorStatus:
            stored = instance.get_instigator_state(schedule.get_remote_origin_id(), schedule.selector_id)
            return schedule.get_current_instigator_state(stored).status

        sql(project_dir, "drop table raw.customers")
        broken = evaluate(None)
        assert status() == InstigatorStatus.STOPPED
        culprit = "models.customers: table raw.customers does not exist"
        paused_line = (
            f"[dinmo] pause: activation 'vip_daily', run none: validation paused vip_daily_schedule: "
            f"{culprit}"
        )
        assert channels.of("slack") == [{"text": paused_line}]
        [trigger] = channels.of("pagerduty")
        assert (trigger["event_action"], trigger["dedup_key"], trigger["payload"]["severity"]) == (
            "trigger",
            "dinmo/vip_daily/paused",
            "error",
        )
        sql(project_dir, CUSTOMERS)
        evaluate(json.dumps({**json.loads(broken.cursor), "last_check": "2000-01-01"}))
        assert status() == InstigatorStatus.DECLARED_IN_CODE
        assert channels.of("slack")[1] == {
            "text": "[dinmo] resume: activation 'vip_daily', run none: validation "
            "passes again; resumed what it had paused"
        }
        assert channels.of("pagerduty")[1] == {
            "routing_key": PD_KEY,
            "event_action": "resolve",
            "dedup_key": "dinmo/vip_daily/paused",
        }
        box, _ = mailbox
        assert [m["Subject"] for m in box.messages] == [
            "[dinmo] pause: activation 'vip_daily'",
            "[dinmo] resume: activation 'vip_daily'",
        ]
        # a failed sync: the run-failure sensor pauses the activation and alerts the pause
        sql(project_dir, "drop table raw.customers")
        failed = _failed_run_context(
            instance, build_definitions(project), "vip_daily", sensor_name=FAILURE_SENSOR
        )
        repo_def.get_sensor_def(FAILURE_SENSOR)(failed)
        assert status() == InstigatorStatus.STOPPED
        paused_again = channels.of("slack")[2]["text"]
        assert paused_again.startswith(
            f"[dinmo] pause: activation 'vip_daily', run {failed.dagster_run.run_id}: paused activation 'vip_daily' "
            "(vip_daily_schedule) after 1 consecutive failed syncs; last error: "
        )
        assert "raw.customers" in paused_again and len(channels.of("slack")) == 3


def test_no_secret_in_any_message_and_a_failing_channel_is_only_logged(
    project_dir: Path, channels: Channels
) -> None:
    project = load_project(project_dir)
    logged: list[str] = []
    cause = (
        f"could not reach {os.environ['TEST_SLACK_WEBHOOK_URL']} with password {SMTP_PASSWORD} "
        f"and key {PD_KEY}"
    )
    sent = alerts.send(
        project, alerts.Alert("vip_broken_channels", "size_change", cause, "run-1"), logged.append
    )
    assert sent == ["slack"]
    assert channels.of("slack") == [
        {
            "text": "[dinmo] size_change: activation 'vip_broken_channels', run run-1: "
            "could not reach *** with password *** and key ***"
        }
    ]
    assert len(logged) == 2
    assert logged[0].startswith("alert 'size_change' of activation 'vip_broken_channels' to webhook failed: ")
    assert "Max retries exceeded with url: *** (Caused by" in logged[0]
    assert logged[1] == (
        "alert 'size_change' of activation 'vip_broken_channels' to pagerduty failed: pagerduty "
        'answered HTTP 400: {"status": "invalid event", "message": "Event object is invalid", '
        '"errors": ["Length of \'routing_key\' is incorrect (should be 32 characters)"]}'
    )
    assert not any(s in "".join(logged) + json.dumps(channels.posts) for s in SECRETS)
    # a failure is not a warning: vip_broken_channels listens to warnings only
    assert (
        alerts.send(
            project, alerts.Alert("vip_broken_channels", "failure", "x", "run-2", failed=True), logged.append
        )
        == []
    )


def test_bad_alert_config_names_the_key_and_the_allowed_values(tmp_path: Path) -> None:
    (tmp_path / "dinmo.yaml").write_text(
        textwrap.dedent("""
        sources:
          wh: {type: duckdb, path: wh.duckdb}
        models:
          customers: {source: wh, table: raw.customers, primary_key: customer_id}
        segments:
          everyone: {model: customers, sql: 'select * from {{ model }}'}
        destinations:
          out: {type: local, path: out}
        alerts:
          on: [failure, pauze]
          to:
            - slack: {webhook_url: "https://hooks.slack.com/services/T0/B0/inlineSecret"}
            - sms: {number: "+33600000000"}
            - email: {smtp_host: smtp.acme.test, from: dinmo@acme.test, to: [data@acme.test], smtp_port: 70000}
        activations:
          full:
            segment: everyone
            destination: out
            file_name: customers
            warnings_block: [empty_segment, rejections]
            alerts: {on: [failure], to: [{webhook: {url: {env: X}}, pagerduty: {routing_key: {env: Y}}}]}
          quiet:
            segment: everyone
            destination: out
            file_name: quiet
            alerts: {to: []}
        """)
    )
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path)
    assert err.value.problems == [
        (
            "dinmo.yaml: alerts.on[1]: found 'pauze'; allowed: 'failure', 'pause', 'resume', 'warning', "
            "'removal_guard', 'rejections', 'size_change' or 'empty_segment'"
        ),
        (
            "dinmo.yaml: alerts.to[0].slack.webhook_url: secrets must not be written in the YAML; found an inline "
            "value; allowed: {env: VARIABLE_NAME}"
        ),
        "dinmo.yaml: alerts.to[1]: unknown key 'sms'; allowed: email, pagerduty, slack, teams, webhook",
        "dinmo.yaml: alerts.to[2].email.smtp_port: Input should be less than or equal to 65535, found 70000",
        (
            "dinmo.yaml: activations.full.alerts.to[0]: give exactly one channel per entry, found 2 (webhook, "
            "pagerduty); allowed: slack, webhook, email, teams, pagerduty"
        ),
        (
            "dinmo.yaml: activations.full.warnings_block[1]: found 'rejections'; allowed: 'empty_segment' or "
            "'size_change'"
        ),
        (
            "dinmo.yaml: activations.quiet.alerts.to: no channel to alert; allowed: a list of slack, webhook, email, "
            "teams or pagerduty channels, here or in the project's alerts section"
        ),
    ]
    assert "inlineSecret" not in "".join(err.value.problems)


def test_no_alert_sensor_without_channels(tmp_path: Path) -> None:
    shutil.copy(
        Path(__file__).parent.parent / "examples" / "quickstart" / "dinmo.yaml", tmp_path / "dinmo.yaml"
    )
    defs = build_definitions(load_project(tmp_path))
    assert ALERTS_SENSOR not in [s.name for s in defs.sensors]
