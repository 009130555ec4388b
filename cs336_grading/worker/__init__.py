"""The student side: the only processes where student code runs, and the grader's end of them.

    server.py      the fork server (`python -m cs336_grading.worker.server`) and each forked worker child
    jail.py        the walls a child enters: limits, namespaces (mount, network, IPC, PID, UTS), a uid, a cgroup
    seal.py        the forbidden kernels replaced, the torch-function watch (the audit's dynamic look)
    client.py      the grader's end (in the pytest process): calls, budgets, deaths, memory, the inbox
    wire.py        the data-only wire format between the two ends (JSON header + raw tensor bytes, no pickle)

Nothing here imports the grader's own modules (`grader/`, `pytest_run/`, `staff/`): what runs beside student
code decides no grade.
"""
