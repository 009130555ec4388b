"""The pytest plugin of a grading process: reports each test's outcome to the grader, one JSON line per
event, and (under `cs336 grade`) routes every call into student code to the sandboxed worker.

The grader loads it into every pytest process it starts with `-p cs336_grading.pytest_run.plugin`: it is imported from
wherever the grading package is installed, never from the workspace. With `CS336_WORKER` set (see
`client.WorkerConfig`), `tests.adapters` becomes a proxy module whose functions run in the worker,
`tests.scenarios.run` forwards there, and `tests.measure` reads the worker's memory: this process, where
the assertions run, never imports the submission.

Events, appended to the file named by `CS336_GRADER_REPORT` and flushed one by one, so that the grader
still knows which test was running when a process is killed:

    {"event": "start", "nodeid": "tests/test_x.py::test_linear"}
    {"event": "result", "nodeid": ..., "status": "passed" | "failed" | "not_implemented" | "memory"
              | "timeout" | "error" | "skipped", "message": "the useful lines of the failure",
              "worker_seconds": 0.01, "peak_mib": 420.0, "findings": ["run_linear called ..."]}
    {"event": "collect_error", "nodeid": "tests/test_x.py", "message": "ImportError: ..."}
    {"event": "collected", "nodeids": [the tests it will run], "ungraded": [those it deselected]}
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from typing import Any

import pytest

from cs336_grading.env import LIMITS_ENV, REPORT_ENV, SELECT_ENV, WORKER_ENV
from cs336_grading.worker.client import MEMORY_MARKERS, StudentError, WorkerClient, WorkerConfig, WorkerFailure

_TIMEOUT_MARKER = "Timeout"  # pytest-timeout fails a test with "Failed: Timeout (>60.0s) from pytest-timeout."
MAX_MESSAGE_LINES, MAX_MESSAGE_CHARS = 10, 1200
_FAILURE_STATUS = {"timeout": "timeout", "memory": "memory", "died": "error", "abort": "error"}


def _emit(record: dict[str, Any]) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def useful_lines(text: str) -> str:
    """The first lines of a failure that say what went wrong (element, got, expected, tolerance, step).

    >>> useful_lines("AssertionError: step 3: Tensor-likes are not close!\\n\\nMismatched elements: 1 / 4\\n")
    'AssertionError: step 3: Tensor-likes are not close! | Mismatched elements: 1 / 4'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[:MAX_MESSAGE_LINES])[:MAX_MESSAGE_CHARS]


def _classify(excinfo: pytest.ExceptionInfo[BaseException]) -> tuple[str, str]:
    """(status, message) of a test whose setup or call raised `excinfo`."""
    exc = excinfo.value
    message = useful_lines(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, WorkerFailure):
        return _FAILURE_STATUS[exc.kind], useful_lines(str(exc))
    if isinstance(exc, StudentError):
        return "error", useful_lines(str(exc))
    if isinstance(exc, NotImplementedError):
        return "not_implemented", message
    if isinstance(exc, MemoryError) or any(m in str(exc) for m in MEMORY_MARKERS):
        return "memory", message
    if excinfo.typename == "Failed" and _TIMEOUT_MARKER in str(exc):
        return "timeout", message
    if isinstance(exc, AssertionError):
        return "failed", message
    return "error", message


class _Recorder:
    def __init__(self, client: WorkerClient | None, limits: dict[str, Any]) -> None:
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.advisory: set[str] = set()  # tests marked `advisory`: reported, worth 0 points
        self.client = client
        self.limits = limits

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        _emit({"event": "start", "nodeid": nodeid})
        if self.client is not None:
            budget = self.limits.get("tests", {}).get(nodeid, self.limits.get("default", 60.0))
            self.client.begin_test(nodeid, float(budget))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report = outcome.get_result()
        if item.get_closest_marker("advisory") is not None:
            self.advisory.add(item.nodeid)
        if call.excinfo is None or item.nodeid in self.outcomes:
            return  # keep the first problem of a test (its call, not a teardown that follows)
        if report.skipped:
            self.outcomes[item.nodeid] = ("skipped", useful_lines(str(call.excinfo.value)))
        elif report.failed:
            status, message = _classify(call.excinfo)
            if call.when != "call" and status == "failed":
                status = "error"  # an assertion in a fixture is the harness's setup failing
            self.outcomes[item.nodeid] = (status, message)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        status, message = self.outcomes.get(nodeid, ("passed", ""))
        record = {} if self.client is None else self.client.end_test()
        if nodeid in self.advisory:
            record["advisory"] = True
        _emit({"event": "result", "nodeid": nodeid, "status": status, "message": message, **record})

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Keep the graded tests of the selected problems; tell the grader which tests this process has."""
        prefixes = tuple(json.loads(os.environ.get(SELECT_ENV) or "[]"))
        if prefixes:
            keep = [i for i in items if i.nodeid.split("::")[-1].split("[")[0].startswith(prefixes)]
            dropped = [i for i in items if i not in keep]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = keep
            _emit({"event": "collected", "nodeids": [i.nodeid for i in keep], "ungraded": [i.nodeid for i in dropped]})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            longrepr = str(report.longrepr)
            # The last "E   ..." line of a collection error names the exception (e.g. an ImportError).
            lines = [line[1:].strip() for line in longrepr.splitlines() if line.startswith("E ")]
            _emit({"event": "collect_error", "nodeid": report.nodeid, "message": (lines or [longrepr])[-1][:300]})

    def pytest_unconfigure(self) -> None:
        if self.client is not None:
            self.client.close()


def _install_proxies(client: WorkerClient) -> None:
    """`tests.adapters` -> the worker; `tests.scenarios.run` and `tests.measure` -> the worker too."""

    class Adapters(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)

            def forward(*args: Any, **kwargs: Any) -> Any:
                return client.call("adapters", name, args, kwargs)

            forward.__name__ = forward.__qualname__ = name
            return forward

    package = importlib.import_module("tests")
    proxy = Adapters("tests.adapters", "the submission's adapters, called in the sandboxed worker")
    sys.modules["tests.adapters"] = proxy
    package.adapters = proxy  # type: ignore[attr-defined]
    for module, attribute, value in (
        ("tests.scenarios", "REMOTE", client),
        ("tests.measure", "WORKER_PID", client.pid),
        ("tests.measure", "WORKER_MEMORY", client.memory_probe),
    ):
        try:
            setattr(importlib.import_module(module), attribute, value)
        except ModuleNotFoundError:
            pass  # a harness without scenarios (the grader's own tests use tiny ones)


def _undumpable() -> None:
    """No process of our user may ptrace this one or read its memory (a worker without a user id of its own)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def pytest_configure(config: pytest.Config) -> None:
    client = None
    if os.environ.get(WORKER_ENV):
        _undumpable()
        client = WorkerClient(WorkerConfig.from_env())
        _install_proxies(client)
    limits = json.loads(os.environ.get(LIMITS_ENV) or "{}")
    config.pluginmanager.register(_Recorder(client, limits), "cs336_grader_recorder")
