"""The fault suite (issue 13): a mixed workload on a three-node cluster while faults are injected.

- ``_workload``: the workflows, the model and tool servers on loopback, the tasks and the
  result each must have (the fault-free result).
- ``_faults``: the faults (workers killed, stopped, frozen into zombies, restarted one by one,
  joined by another; a broker killed) and the schedule that injects them mid-batch.
- ``_report``: the figures, as a table and as JSON.

``tests/integration/test_chaos.py`` runs it; see docs/operations.md for what it found.
"""
