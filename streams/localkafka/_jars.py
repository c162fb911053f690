"""The broker's jars, fetched once from Maven Central into a per-version cache.

The cache is ``$XDG_CACHE_HOME/baton/kafka-<version>`` (or ``~/.cache/...``) holding ``libs/``
and a ``.complete`` marker. Maven downloads into a temporary sibling directory that is renamed
into place only once it is complete, so an interrupted fetch never leaves a half cache; a file
lock keeps concurrent fetches (parallel test processes) from racing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from streams.localkafka._errors import KafkaStartError
from streams.localkafka._filelock import file_lock
from topics import ConfigurationError

__all__ = ["cached_jars", "default_cache_dir", "fetch_jars", "require_tool"]

_MARKER = ".complete"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies"
_FETCH_TIMEOUT = 900.0
_HINTS = {
    "java": "install a Java 17 runtime (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`,"
    " macOS: `brew install openjdk@17`) and put `java` on PATH",
    "mvn": "install Apache Maven (Debian/Ubuntu: `apt-get install maven`, macOS: `brew install"
    " maven`) and put `mvn` on PATH; it fetches the Kafka jars from Maven Central once",
}


def default_cache_dir(version: str) -> Path:
    """Where the jars of Kafka ``version`` are cached when no directory is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / f"kafka-{version}"


def require_tool(name: str) -> str:
    """The full path of the executable ``name`` (``java`` or ``mvn``).

    Raises:
        ConfigurationError: It is not on ``PATH``; the message says how to install it.
    """
    found = shutil.which(name)
    if found is None:
        hint = _HINTS.get(name, f"install `{name}` and put it on PATH")
        raise ConfigurationError(f"`{name}` not found on PATH: {hint}")
    return found


def cached_jars(version: str, cache_dir: Path | None = None) -> Path | None:
    """The ``libs`` directory of a complete cache of Kafka ``version``, or ``None``."""
    target = cache_dir if cache_dir is not None else default_cache_dir(version)
    if (target / _MARKER).is_file():
        return target / "libs"
    return None


def fetch_jars(version: str, cache_dir: Path | None = None) -> Path:
    """Make sure the jars of Kafka ``version`` are cached and return their directory.

    A complete cache makes this a no-op: no network, no Maven.

    Args:
        version: Apache Kafka version, e.g. ``"3.9.1"``.
        cache_dir: The cache directory; defaults to :func:`default_cache_dir`.

    Returns:
        The ``libs`` directory, ready for ``java -cp "<libs>/*"``.

    Raises:
        ConfigurationError: ``java`` or ``mvn`` is missing.
        KafkaStartError: Maven failed (the message holds the end of its output).
    """
    target = cache_dir if cache_dir is not None else default_cache_dir(version)
    libs = cached_jars(version, target)
    if libs is not None:
        return libs
    require_tool("java")
    mvn = require_tool("mvn")
    with file_lock(target.parent / f".{target.name}.lock"):
        libs = cached_jars(version, target)
        if libs is not None:
            return libs
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _download(mvn, version, staging)
            if target.exists():
                # Left by something other than a fetch (which renames only complete caches).
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target / "libs"


def _download(mvn: str, version: str, staging: Path) -> None:
    """Run Maven into ``staging/libs`` and write the completion marker."""
    pom = staging / "pom.xml"
    pom.write_bytes(resources.files("streams.localkafka").joinpath("pom.xml").read_bytes())
    libs = staging / "libs"
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        _DEPENDENCY_PLUGIN,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={version}",
    ]
    try:
        done = subprocess.run(
            command,
            cwd=staging,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FETCH_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaStartError(
            f"fetching the Kafka {version} jars took longer than {_FETCH_TIMEOUT:.0f} s"
        ) from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise KafkaStartError(
            f"Maven could not fetch the Kafka {version} jars (exit status {done.returncode}); "
            "is Maven Central reachable?",
            log_tail=_tail(output),
        )
    jars = sorted(p.name for p in libs.glob("*.jar"))
    if f"kafka_2.13-{version}.jar" not in jars:
        raise KafkaStartError(
            f"Maven finished but kafka_2.13-{version}.jar is not among the fetched jars",
            log_tail=_tail(output),
        )
    marker = {"version": version, "jars": len(jars)}
    (staging / _MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
