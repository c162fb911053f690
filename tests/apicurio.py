"""A real Confluent-compatible Schema Registry for the tests: Apicurio Registry on loopback.

Apicurio is fetched once from Maven Central (``io.apicurio:apicurio-registry-app``, about
110 MB) into ``$XDG_CACHE_HOME/baton/apicurio-<version>``, the way the broker's jars are, and
runs on the system's Java 17 in memory: every start is an empty registry. It serves the
Confluent Schema Registry API under ``/apis/ccompat/v7``. See
``../shared/notes/schema-registry.md`` for what was checked against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from streams.localkafka._filelock import file_lock
from streams.localkafka._jars import require_tool
from tests.integration.workers import free_port

VERSION = "3.0.9"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
_JAR = f"apicurio-registry-app-{VERSION}-runner.jar"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / f"apicurio-{VERSION}"


def fetch() -> Path:
    """The unpacked registry (fetched and unpacked once; a file lock guards the cache)."""
    target = _cache_dir()
    if (target / _JAR).is_file():
        return target
    mvn = require_tool("mvn")
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / _JAR).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            done = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact={_ARTIFACT}",
                    f"-DoutputDirectory={staging / 'download'}",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"Maven could not fetch {_ARTIFACT}:\n{done.stdout[-2000:]}")
            archive = next((staging / "download").glob("*.tar.gz"))
            unpacked = staging / "unpacked"
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            if target.exists():
                shutil.rmtree(target)
            unpacked.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@contextmanager
def apicurio(log: Path) -> Iterator[str]:
    """A running, empty registry; yields its Confluent API base URL."""
    home = fetch()
    java = require_tool("java")
    port = free_port()
    env = dict(
        os.environ,
        QUARKUS_HTTP_HOST="127.0.0.1",
        QUARKUS_HTTP_PORT=str(port),
        # the management interface would listen on 0.0.0.0:9000 otherwise (and collide)
        QUARKUS_MANAGEMENT_HOST="127.0.0.1",
        QUARKUS_MANAGEMENT_PORT="0",
    )
    command = [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", _JAR]
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=home, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Apicurio exited {process.returncode}: see {log}")
            try:
                if httpx.get(f"{url}/subjects", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Apicurio did not answer in 120 s: see {log}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
