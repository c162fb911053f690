"""The orchestration: the Faust app, the coordinator, run state, retries, approvals, the CLI.

Imports flow one way: ``streams`` -> ``processors`` -> ``topics``.
"""
