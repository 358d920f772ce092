"""The stop budget, in one place: how long each phase of a shutdown may take.

After SIGTERM a process stops accepting, gives connections that may still send a request
``ACCEPT_GRACE_S`` to send it, lets its requests finish within ``DRAIN_TIMEOUT_S``, then drains the
batches with what is left of that budget (at least ``BATCH_DRAIN_FLOOR_S``, for the pass in
flight). A supervisor waits ``stop_budget_s`` for a worker before it kills it; a pod's grace
period must cover it (tests/test_deploy.py)."""

from __future__ import annotations

import time

# at shutdown, how long a connection with no request in flight (accepted a moment before, or kept
# alive after an answer) may take to send one
ACCEPT_GRACE_S = 1.0
# after the requests' drain, the batches get what is left of DRAIN_TIMEOUT_S, and at least this
BATCH_DRAIN_FLOOR_S = 1.0


def stop_budget_s(drain_timeout_s: float) -> float:
    """The longest a process takes to stop after SIGTERM: the accept grace, then its requests
    (``DRAIN_TIMEOUT_S``), then its batches with what is left of that (at least BATCH_DRAIN_FLOOR_S)."""
    return ACCEPT_GRACE_S + drain_timeout_s + BATCH_DRAIN_FLOOR_S


def batch_drain_budget_s(drain_timeout_s: float, stop_started: float | None, now: float | None = None) -> float:
    """What the batches get once the requests have drained: the rest of the stop budget counted
    from ``stop_started`` (a ``time.monotonic()``), at least BATCH_DRAIN_FLOOR_S. With no recorded
    start (a lifespan ended without a signal: tests, an embedding app) the whole drain timeout."""
    if stop_started is None:
        return drain_timeout_s
    elapsed = (time.monotonic() if now is None else now) - stop_started
    return max(BATCH_DRAIN_FLOOR_S, stop_budget_s(drain_timeout_s) - BATCH_DRAIN_FLOOR_S - elapsed)
