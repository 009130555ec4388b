"""One guarded pytest run: the process that asserts (trusted, never imports student code) and its walls.

sandbox.py     the grader's side: throw-away workspaces, the pytest process under time and memory limits,
               its event stream read without following links, the harness compared byte for byte after
plugin.py      inside that pytest process (`-p cs336_grading.pytest_run.plugin`): the bridge into the
               harness; `tests.adapters` becomes a proxy to the worker, each outcome is reported as an event
"""
