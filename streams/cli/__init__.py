"""The ``baton`` command line.

Each command group lives in its own module and is registered here; output goes through
``rich`` (tables, progress bars) and errors end the command with a one-line message and a
non-zero exit status instead of a traceback.
"""

from streams.cli._main import main

__all__ = ["main"]
