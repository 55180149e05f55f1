"""Repeated frame failures: one log line per kind and interval with a count, tracebacks only at
DEBUG (issue 10, item 15). A real logger; the clock is injected so the interval is exact."""

from __future__ import annotations

import logging

import pytest

from server.observability.failure_log import FailureLog


def test_one_line_per_kind_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("tests.failure_log")
    failures = FailureLog(logger, interval_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="tests.failure_log")
    for second in range(30):  # one bad frame a second for 30 s, and one other kind
        now[0] = float(second)
        failures.failed("frames of cam: frame failed to decode", ValueError("bad frame"))
    failures.failed("model m: a batch failed", RuntimeError("onnxruntime said no"))
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "frames of cam: frame failed to decode (ValueError): bad frame",
        "frames of cam: frame failed to decode (ValueError): bad frame; "
        "10 such failures in the last 10 s",
        "frames of cam: frame failed to decode (ValueError): bad frame; "
        "10 such failures in the last 10 s",
        "model m: a batch failed (RuntimeError): onnxruntime said no",
    ]
    assert not [record for record in caplog.records if record.exc_info]


def test_tracebacks_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.failure_log_debug")
    failures = FailureLog(logger, interval_s=10.0, clock=lambda: 0.0)
    caplog.set_level(logging.DEBUG, logger="tests.failure_log_debug")
    try:
        raise ValueError("bad frame")
    except ValueError as error:
        failures.failed("frames of cam", error)
        failures.failed("frames of cam", error)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    debug = [record for record in caplog.records if record.levelno == logging.DEBUG]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert len(debug) == 2 and all(record.exc_info for record in debug)
