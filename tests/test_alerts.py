"""Alert rules over the database's stats, their shared state, and Alertmanager-format webhooks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from receiver import WebhookReceiver, dead_url

from ctxbatch import ConfigError
from ctxbatch.config import DEFAULT_ALERTS, MonitoringSettings, load_config
from ctxbatch.io import ContextStore, utcnow
from ctxbatch.io.alert_state import AlertBook
from ctxbatch.monitoring.alerts import AlertMonitor, AlertsCollector
from ctxbatch.monitoring.webhook import WebhookSender

QUEUE_RULE = {"name": "QueueLong", "metric": "queue_length", "above": 2, "severity": "page", "summary": "Too many"}


def monitor(
    store: ContextStore, owner: str = "loop-a", clock: Callable[[], float] = time.monotonic, **monitoring: Any
) -> AlertMonitor:
    settings = MonitoringSettings.model_validate({"default_alerts": False, "alerts": [QUEUE_RULE], **monitoring})
    return AlertMonitor(store, settings, owner, clock)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(store: ContextStore) -> None:
    claim = store.claim(100, "loop")
    store.complete(claim, dict.fromkeys(claim.ids, 1))


def alert_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "alert " in r.getMessage()]


# -- firing, resolving, and what is sent -------------------------------------------------------


def test_a_rule_fires_then_resolves_and_the_receiver_gets_alertmanagers_format(
    store: ContextStore, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = monitor(store, webhook_url=receiver.url)
    store.submit([{"payload": {}} for _ in range(3)])

    assert [c.status for c in alerts.evaluate_once()] == ["firing"]
    drain(store)
    assert [c.status for c in alerts.evaluate_once()] == ["resolved"]
    alerts.stop()

    firing, resolved = receiver.wait_for(lambda bodies: len(bodies) == 2)
    assert firing["version"] == "4" and firing["receiver"] == "ctxbatch" and firing["status"] == "firing"
    assert firing["groupLabels"] == {"alertname": "QueueLong"}
    (alert,) = firing["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "QueueLong", "severity": "page", "metric": "queue_length"}
    assert firing["commonLabels"] == alert["labels"]
    assert alert["annotations"]["summary"] == "Too many"
    assert "queue_length = 3, above 2" in alert["annotations"]["description"]
    assert alert["startsAt"].endswith("Z") and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["status"] == resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["startsAt"] == alert["startsAt"]
    assert resolved["alerts"][0]["endsAt"] > alert["startsAt"]
    assert alert_lines(caplog) == [
        "alert firing: QueueLong (page): queue_length = 3, above 2",
        "alert resolved: QueueLong",
    ]


def test_a_rule_that_keeps_holding_fires_once(store: ContextStore, receiver: WebhookReceiver) -> None:
    alerts = monitor(store, webhook_url=receiver.url)
    store.submit([{"payload": {}} for _ in range(3)])
    changes = [alerts.evaluate_once() for _ in range(3)]
    assert [len(c) for c in changes] == [1, 0, 0]
    alerts.stop()
    receiver.wait_for(lambda bodies: len(bodies) >= 1)
    assert receiver.statuses() == [("firing", "QueueLong")]


def test_a_rule_fires_only_once_it_held_for_its_for_seconds(store: ContextStore) -> None:
    clock = FakeClock()
    alerts = monitor(store, clock=clock, alerts=[{**QUEUE_RULE, "for_seconds": 30}])
    store.submit([{"payload": {}} for _ in range(3)])
    # Held from now: not yet, nor a moment before its 30 s are up
    assert alerts.evaluate_once() == []
    clock.advance(29.9)
    assert alerts.evaluate_once() == []
    assert alerts.evaluator.firing == {"QueueLong": False}
    # Held for 30 s: it fires, once
    clock.advance(0.1)
    assert [c.status for c in alerts.evaluate_once()] == ["firing"]
    clock.advance(60)
    assert alerts.evaluate_once() == []
    assert alerts.evaluator.firing == {"QueueLong": True}


def test_a_rule_that_stops_holding_starts_its_for_seconds_again(store: ContextStore) -> None:
    clock = FakeClock()
    alerts = monitor(store, clock=clock, alerts=[{**QUEUE_RULE, "for_seconds": 30}])
    store.submit([{"payload": {}} for _ in range(3)])
    assert alerts.evaluate_once() == []
    clock.advance(20)
    drain(store)  # stops holding after 20 s
    assert alerts.evaluate_once() == []
    store.submit([{"payload": {}} for _ in range(3)])  # holds again, from now
    assert alerts.evaluate_once() == []
    clock.advance(20)  # 40 s since it first held, 20 s since it held again
    assert alerts.evaluate_once() == []
    clock.advance(10)
    assert [c.status for c in alerts.evaluate_once()] == ["firing"]


def test_two_loops_record_and_send_one_alert_not_two(
    store: ContextStore, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two loops over the same database, with the same rules and receiver
    first, second = (monitor(store, owner, webhook_url=receiver.url) for owner in ("loop-a", "loop-b"))
    store.submit([{"payload": {}} for _ in range(3)])

    # When both evaluate the same change, twice over
    won = [len(m.evaluate_once()) for m in (first, second, second, first)]
    assert first.evaluator.firing == second.evaluator.firing == {"QueueLong": True}
    drain(store)
    won += [len(m.evaluate_once()) for m in (second, first)]

    # Then one of them recorded each change
    assert won == [1, 0, 0, 0, 1, 0]
    assert first.evaluator.firing == second.evaluator.firing == {"QueueLong": False}
    for m in (first, second):
        m.stop()
    # (each from the sender of the loop that won it: two senders, so either may arrive first)
    receiver.wait_for(lambda bodies: len(bodies) >= 2)
    assert sorted(receiver.statuses()) == [("firing", "QueueLong"), ("resolved", "QueueLong")]
    assert len(alert_lines(caplog)) == 2


def test_every_loop_shows_the_recorded_state_in_its_alerts_gauge(store: ContextStore) -> None:
    first, second = monitor(store, "loop-a"), monitor(store, "loop-b")
    store.submit([{"payload": {}} for _ in range(3)])
    first.evaluate_once()
    second.evaluate_once()
    for m in (first, second):
        registry = CollectorRegistry()
        registry.register(AlertsCollector(m.evaluator))
        (family,) = text_string_to_metric_families(generate_latest(registry).decode())
        assert family.name == "ctxbatch_alerts_firing"
        assert [(s.labels, s.value) for s in family.samples] == [({"alertname": "QueueLong", "severity": "page"}, 1)]


# -- the metrics a rule can watch --------------------------------------------------------------


def evaluate(store: ContextStore, rule: dict[str, Any]) -> list[str]:
    alerts = monitor(store, alerts=[{"name": "R", **rule}])
    return [c.status for c in alerts.evaluate_once()]


def test_success_rate_below_fires_when_contexts_fail(store: ContextStore) -> None:
    assert evaluate(store, {"metric": "success_rate", "below": 0.9}) == []  # nothing finished: no rate
    store.submit([{"payload": {}} for _ in range(2)])
    claim = store.claim(2, "loop")
    error = {"type": "ValueError", "message": "x", "traceback": ""}
    store.settle(claim, results={claim.ids[0]: 1}, errors={claim.ids[1]: error}, retry_at=None)
    assert evaluate(store, {"metric": "success_rate", "below": 0.9}) == ["firing"]


def test_critical_errors_any_loop_recorded_are_counted(store: ContextStore) -> None:
    AlertBook(store.db).record_critical("other-loop", "ctxbatch-1-abcdef", {"type": "CriticalError"}, utcnow())
    assert evaluate(store, {"metric": "critical_errors", "above": 0}) == ["firing"]


def test_oldest_pending_of_a_level(store: ContextStore) -> None:
    store.submit([{"payload": {}, "priority": 90}])
    assert evaluate(store, {"metric": "oldest_pending_seconds", "level": "high", "above": -1}) == []
    assert evaluate(store, {"metric": "oldest_pending_seconds", "level": "low", "above": -1}) == ["firing"]


def test_seconds_since_progress_is_zero_without_work_and_grows_with_waiting_work(store: ContextStore) -> None:
    assert store.seconds_since_progress() == 0
    store.submit([{"payload": {}}])
    store.claim(1, "stalled-loop")
    waited = store.seconds_since_progress()
    assert 0 <= waited < 60
    until(lambda: store.seconds_since_progress() > waited, "seconds_since_progress grew", timeout=20)


# -- the webhook never holds anything up -------------------------------------------------------


def test_a_dead_webhook_is_logged_and_given_up_when_the_monitor_stops(
    store: ContextStore, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = monitor(store, webhook_url=dead_url())
    assert alerts.sender is not None
    store.submit([{"payload": {}} for _ in range(3)])
    # The change is recorded and logged though its notification cannot go anywhere
    assert [c.status for c in alerts.evaluate_once()] == ["firing"]
    failed = f"alert webhook {alerts.sender.url} failed"
    until(lambda: any(r.getMessage().startswith(failed) for r in caplog.records), "the failed POST logged")
    # And stopping gives the notification up, saying so, rather than trying again
    alerts.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 notifications to" in m and "were not delivered" in m for m in messages)
    assert alerts.sender.delivered == 0


def test_a_receiver_that_is_down_at_first_gets_the_notification_later() -> None:
    with WebhookReceiver(fail_first=2).running() as flaky:
        sender = WebhookSender(flaky.url, pauses=(0.05,))
        sender.send({"status": "firing", "alerts": [{"labels": {"alertname": "A"}}]})
        flaky.wait_for(lambda bodies: len(bodies) == 1)
        sender.close()
        assert flaky.attempts == 3


def test_a_slow_receiver_never_blocks_send() -> None:
    answer = threading.Event()
    with WebhookReceiver(hold=answer).running() as slow:
        sender = WebhookSender(slow.url)
        # Every send returns while the receiver has not answered (nor recorded) the first POST
        for i in range(5):
            sender.send({"status": "firing", "alerts": [{"labels": {"alertname": f"A{i}"}}]})
        assert slow.bodies == []
        # And once it answers, each notification arrives, in order
        answer.set()
        slow.wait_for(lambda bodies: len(bodies) == 5)
        sender.close()
    assert [name for _, name in slow.statuses()] == [f"A{i}" for i in range(5)]


def test_a_full_queue_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    sender = WebhookSender(dead_url(), limit=2, pauses=(60.0,))
    for i in range(4):
        sender.send({"status": f"n{i}"})
    sender.close(wait=0)
    assert sum("dropped the oldest" in r.getMessage() for r in caplog.records) >= 1


def test_the_monitor_thread_evaluates_every_interval(store: ContextStore) -> None:
    alerts = monitor(store, evaluate_every_seconds=0.05)
    alerts.start()
    until(lambda: alerts.evaluations >= 3, "three evaluations", timeout=20, every=0.01)
    alerts.stop()


# -- configuration ----------------------------------------------------------------------------


def test_the_default_rules_are_on_unless_turned_off() -> None:
    assert [r.name for r in MonitoringSettings().rules()] == [r.name for r in DEFAULT_ALERTS]
    assert MonitoringSettings(default_alerts=False).rules() == []
    assert {r.metric for r in DEFAULT_ALERTS} == {"seconds_since_progress", "success_rate", "critical_errors"}


def test_a_rule_named_like_a_default_replaces_it() -> None:
    mine = {"name": "CtxbatchSuccessRateLow", "metric": "success_rate", "below": 0.5}
    rules = {r.name: r for r in MonitoringSettings.model_validate({"alerts": [mine]}).rules()}
    assert len(rules) == len(DEFAULT_ALERTS) and rules["CtxbatchSuccessRateLow"].below == 0.5


def test_the_old_threshold_keys_are_shorthands_for_rules() -> None:
    rules = {r.name: r for r in MonitoringSettings(alert_error_rate=0.25, alert_queue_length=1000).rules()}
    assert (rules["CtxbatchErrorRate"].metric, rules["CtxbatchErrorRate"].below) == ("success_rate", 0.75)
    assert (rules["CtxbatchQueueLong"].metric, rules["CtxbatchQueueLong"].above) == ("queue_length", 1000)


@pytest.mark.parametrize(
    ("rule", "key", "message"),
    [
        ({"name": "A", "metric": "queue_length"}, "monitoring.alerts.0", "exactly one of `above` and `below`"),
        ({"name": "A", "metric": "queue_length", "above": 1, "below": 0}, "monitoring.alerts.0", "exactly one"),
        ({"name": "A", "metric": "latency", "above": 1}, "monitoring.alerts.0.metric", "success_rate"),
        ({"name": "A", "metric": "success_rate", "below": 1, "level": "high"}, "monitoring.alerts.0", "`level`"),
        ({"name": "A", "metric": "queue_length", "above": 1, "level": "urgent"}, "", "no level 'urgent'"),
        ({"name": "A", "metric": "queue_length", "above": 1, "for": 3}, "monitoring.alerts.0.for", "unknown key"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_key(rule: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"monitoring": {"alerts": [rule]}})
    assert message in str(refused.value)
    assert key in str(refused.value)


def test_repeated_rule_names_are_refused() -> None:
    rule = {"name": "A", "metric": "queue_length", "above": 1}
    with pytest.raises(ConfigError, match="'A' repeats"):
        load_config({"monitoring": {"alerts": [rule, rule]}})
