"""``baton bench``: run the benchmark suite (BENCH.md) from a source checkout.

The suite lives in the repository's ``bench`` package, which is not part of the installed
distribution; this command finds it beside the ``streams`` package it was started from and
runs it in-process. Every argument goes to the suite (``baton bench --help`` lists them).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from topics import ConfigurationError

__all__ = ["bench"]

_NEEDS = ("psutil", "matplotlib")


def _checkout() -> Path | None:
    """The source checkout this ``streams`` package belongs to, if it has a ``bench``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "bench" / "__init__.py").is_file() else None


def _load_suite() -> None:
    """Make ``bench`` importable, or say why it is not.

    Raises:
        ConfigurationError: Not a source checkout, or the suite's dependencies are missing.
    """
    if importlib.util.find_spec("bench") is None:
        root = _checkout()
        if root is None:
            raise ConfigurationError(
                "baton bench runs from a source checkout: the `bench` package is not "
                "installed with baton. Clone the repository and run `baton bench` (or "
                "`python -m bench`) from its virtualenv (pip install -e '.[dev,bench]')."
            )
        sys.path.insert(0, str(root))
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"baton bench needs {', '.join(missing)}: pip install -e '.[bench]'"
        )


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the benchmarks (BENCH.md); writes a JSON report and a plot to bench/out.

    Options go to the suite: --quick, --only T4,B1, --out DIR, ... (see --help).
    """
    _load_suite()
    suite = importlib.import_module("bench._cli")
    suite.main(list(args), prog="baton bench")
