"""A used-up test budget is reported as what it is (issue 21): a call that raised says so, and a budget that
is used up says which calls used it, never "did not return within its limit of -0.00245 s".

A property test whose first example raises (a stub's NotImplementedError) retries it many times to shrink
it; those calls use up the test's budget, and the next call is refused before it is sent.
"""

from __future__ import annotations

import pytest

from cs336_grading.worker.client import StudentError, WorkerClient, WorkerFailure


def _client_with_budget_used(first_raised: BaseException | None) -> WorkerClient:
    client = WorkerClient.__new__(WorkerClient)  # no worker: the budget check comes before any is started
    client.begin_test("tests/test_train_bpe.py::test_train_bpe_random_corpora", 0.5)
    client.hangs = {}
    client._note_peak = lambda: None  # type: ignore[method-assign]
    client._stop_worker = lambda: None  # type: ignore[method-assign]
    client.spent_s = 0.50245
    client.calls = {"run_train_bpe": [41, 0.50245]}
    client.first_raised = first_raised
    return client


def test_a_call_that_raised_says_so_when_the_budget_is_used_up() -> None:
    client = _client_with_budget_used(NotImplementedError("run_train_bpe raised NotImplementedError: todo"))
    with pytest.raises(NotImplementedError) as caught:
        client.call("adapters", "run_train_bpe", ("corpus.txt", 300, []), {})
    message = str(caught.value)
    assert message.startswith("run_train_bpe raised NotImplementedError: todo")
    assert "used up by run_train_bpe (41 calls, 0.502 s)" in message
    assert "-0." not in message and "did not return" not in message


def test_a_student_error_keeps_its_exception_names() -> None:
    raised = StudentError("run_get_batch raised ValueError: bad")
    raised.bases = ("ValueError", "Exception")
    client = _client_with_budget_used(raised)
    with pytest.raises(StudentError) as caught:
        client.call("adapters", "run_get_batch", (), {})
    assert caught.value.bases == ("ValueError", "Exception")


def test_a_used_up_budget_names_the_calls_that_used_it() -> None:
    client = _client_with_budget_used(None)
    with pytest.raises(WorkerFailure) as caught:
        client.call("adapters", "run_train_bpe", (), {})
    assert caught.value.kind == "timeout"
    assert str(caught.value) == (
        "run_train_bpe was not called: the test's budget of 0.5 s was used up by run_train_bpe (41 calls, 0.502 s)"
    )
