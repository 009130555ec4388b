"""A tiny pytest plugin that reports each test's outcome to the grader, one JSON line per event.

The grader loads it into every pytest process it starts with `-p cs336_grading.plugin`: it is imported from
wherever the grading package is installed, never from the workspace (which holds the student's package). It
needs nothing but the standard library and pytest.

Events, appended to the file named by `CS336_GRADER_REPORT` and flushed one by one, so that the grader
still knows which test was running when a process is killed:

    {"event": "start", "nodeid": "tests/test_x.py::test_linear"}
    {"event": "result", "nodeid": ..., "status": "passed" | "failed" | "not_implemented" | "memory"
              | "timeout" | "error" | "skipped", "message": "first line of the failure", "duration": 0.1}
    {"event": "collect_error", "nodeid": "tests/test_x.py", "message": "ImportError: ..."}
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

REPORT_ENV = "CS336_GRADER_REPORT"

# Substrings of allocation failures that are not a MemoryError (torch raises RuntimeError).
_MEMORY_MARKERS = ("can't allocate memory", "cannot allocate memory", "DefaultCPUAllocator", "out of memory")
_TIMEOUT_MARKER = "Timeout"  # pytest-timeout fails a test with "Failed: Timeout (>60.0s) from pytest-timeout."


def _emit(record: dict[str, Any]) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _first_line(text: str, limit: int = 300) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def _classify(excinfo: pytest.ExceptionInfo[BaseException]) -> tuple[str, str]:
    """(status, message) of a test whose setup or call raised `excinfo`."""
    exc = excinfo.value
    message = _first_line(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, NotImplementedError):
        return "not_implemented", message
    if isinstance(exc, MemoryError) or any(m in str(exc) for m in _MEMORY_MARKERS):
        return "memory", message
    if excinfo.typename == "Failed" and _TIMEOUT_MARKER in str(exc):
        return "timeout", message
    if isinstance(exc, AssertionError):
        return "failed", message
    return "error", message


class _Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[str, tuple[str, str]] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        _emit({"event": "start", "nodeid": nodeid})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report = outcome.get_result()
        if call.excinfo is None or item.nodeid in self.outcomes:
            return  # keep the first problem of a test (its call, not a teardown that follows)
        if report.skipped:
            self.outcomes[item.nodeid] = ("skipped", _first_line(str(call.excinfo.value)))
        elif report.failed:
            status, message = _classify(call.excinfo)
            if call.when != "call" and status == "failed":
                status = "error"  # an assertion in a fixture is the harness's setup failing
            self.outcomes[item.nodeid] = (status, message)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        status, message = self.outcomes.get(nodeid, ("passed", ""))
        _emit({"event": "result", "nodeid": nodeid, "status": status, "message": message})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            longrepr = str(report.longrepr)
            # The last "E   ..." line of a collection error names the exception (e.g. an ImportError).
            lines = [line[1:].strip() for line in longrepr.splitlines() if line.startswith("E ")]
            _emit({"event": "collect_error", "nodeid": report.nodeid, "message": (lines or [longrepr])[-1][:300]})


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Recorder(), "cs336_grader_recorder")
