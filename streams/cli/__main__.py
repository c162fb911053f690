"""``python -m streams.cli`` is ``baton``."""

from streams.cli import main

main()
