"""app.server.drain: the stop budget's arithmetic, in one place."""

from __future__ import annotations

from app.server.drain import ACCEPT_GRACE_S, BATCH_DRAIN_FLOOR_S, batch_drain_budget_s, stop_budget_s


def test_the_stop_budget_is_grace_plus_drain_plus_the_last_batch():
    assert stop_budget_s(25.0) == ACCEPT_GRACE_S + 25.0 + BATCH_DRAIN_FLOOR_S == 27.0


def test_the_batches_get_what_is_left_of_it():
    assert batch_drain_budget_s(25.0, None) == 25.0  # no signal recorded: the whole drain timeout
    assert batch_drain_budget_s(25.0, stop_started=100.0, now=110.0) == 16.0  # 1 + 25 - 10
    assert batch_drain_budget_s(25.0, stop_started=100.0, now=200.0) == BATCH_DRAIN_FLOOR_S  # never less than the floor
    assert batch_drain_budget_s(0.0, stop_started=100.0, now=100.0) == BATCH_DRAIN_FLOOR_S
