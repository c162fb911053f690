"""``python -m bench``: run the benchmark suite."""

from bench._cli import main

main()
