"""docker-compose.yml and the Dockerfile: brokers, topics and workers that fit together.

No Docker is needed: the files are read as the tools would read them and checked against
baton itself (the settings model, the click commands, the worker's HTTP routes), so a renamed
setting, command or route fails here rather than in someone's `docker compose up`.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from streams import _config
from streams._config import Settings, load_settings
from streams.app import build_worker
from streams.cli import main
from streams.cli._topics import topics_group
from streams.cli._worker import worker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _brokers() -> dict[str, Any]:
    return {name: s for name, s in _services().items() if name.startswith("kafka-")}


def _baton_services() -> dict[str, Any]:
    """The services that run the image the Dockerfile builds."""
    return {name: s for name, s in _services().items() if "build" in s}


def _workers() -> dict[str, Any]:
    return {name: s for name, s in _baton_services().items() if s["command"][0] == "worker"}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a container sees it: the image's ``ENV``, then its own."""
    env = dict(_image().final.env)
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env.update({key: str(value) for key, value in raw.items()})
    return env


def _settings(service: dict[str, Any]) -> Settings:
    return load_settings(_environment(service))


# -- the Dockerfile, read instruction by instruction -----------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def last(self, instruction: str) -> str | None:
        found = [args for name, args in self.instructions if name == instruction]
        return found[-1] if found else None


@dataclass
class Image:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _image() -> Image:
    """The Dockerfile's stages: continuation lines joined, comments and directives dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "FROM":
            words = rest.split()
            base = words[0]
            for key, value in args.items():
                base = base.replace("${" + key + "}", value).replace("$" + key, value)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, rest))
            if instruction == "ENV":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    stages[-1].env[key] = value
    return Image(args=args, stages=stages)


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK, as the exec-form argv Docker runs."""
    healthcheck = _image().final.last("HEALTHCHECK")
    assert healthcheck is not None, "the image has no HEALTHCHECK"
    words = healthcheck.split(" ")
    command_at = words.index("CMD")
    return _exec_form(" ".join(words[command_at + 1 :]))


def _healthcheck_path() -> str:
    """The path the health check asks: the URL it opens, after the port."""
    code = _healthcheck_command()[-1]
    _, _, after_port = code.partition("{s.web_port}")
    assert after_port, f"the health check asks no URL on the worker's port: {code}"
    return after_port.split("'", 1)[0]


# -- the brokers -----------------------------------------------------------------------------


def test_three_kraft_nodes_that_agree_on_the_quorum() -> None:
    brokers = _brokers()
    assert len(brokers) == 3
    node_ids = {int(s["environment"]["KAFKA_NODE_ID"]) for s in brokers.values()}
    assert node_ids == {1, 2, 3}
    for name, service in brokers.items():
        env = service["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {str(i): f"kafka-{i}:9093" for i in node_ids}
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert service["image"] == f"apache/kafka:{Settings().kafka_version}"
        # what a host client is told to connect to is what the host can reach
        external = next(
            a for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("EXTERNAL")
        )
        host_port = external.rsplit(":", 1)[1]
        assert service["ports"] == [f"{host_port}:9094"]
        assert env["KAFKA_NODE_ID"] == name.split("-")[1]
        assert service["healthcheck"]["test"], f"{name} has no healthcheck"


def test_baton_reaches_every_broker_on_its_internal_listener() -> None:
    internal = set()
    for service in _brokers().values():
        listeners = service["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
        internal |= {a.split("://", 1)[1] for a in listeners if a.startswith("INTERNAL://")}
    assert len(internal) == 3
    for name, service in _baton_services().items():
        bootstrap = _settings(service).bootstrap
        assert bootstrap is not None, f"{name} sets no BATON_BOOTSTRAP"
        assert {a.strip() for a in bootstrap.split(",")} == internal, name


# -- settings --------------------------------------------------------------------------------


def _variables_baton_reads() -> set[str]:
    """``BATON_<FIELD>`` for every field of the settings model, and the settings file's name."""
    prefix = _config._ENV_PREFIX
    return {prefix + name.upper() for name in Settings.model_fields} | {prefix + "CONFIG"}


def test_every_baton_variable_set_is_a_setting_baton_reads() -> None:
    known = _variables_baton_reads()
    assert "BATON_WORKER_ID" in known and "BATON_BOOTSTRAP" in known  # the model was read
    image_env = _image().final.env
    assert {k for k in image_env if k.startswith("BATON_")} <= known, image_env
    baton = _baton_services()
    assert len(baton) >= 4  # topics and three workers
    for name, service in baton.items():
        env = _environment(service)
        unknown = {k for k in env if k.startswith("BATON_")} - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which no setting reads"
        # and each value is valid: the worker would start with them
        load_settings(env)
    for name, service in _brokers().items():
        assert not [k for k in service["environment"] if k.startswith("BATON_")], name


def test_the_topics_service_creates_the_topics_the_workers_use() -> None:
    topics = _settings(_baton_services()["topics"])
    for name, service in _workers().items():
        worker = _settings(service)
        assert worker.catalog() == topics.catalog(), name
        assert worker.replication_factor == topics.replication_factor, name


def test_workers_have_distinct_ids_and_are_reached_at_their_own_address() -> None:
    workers = _workers()
    assert len(workers) >= 3
    ids = [_settings(s).worker_id for s in workers.values()]
    assert len(set(ids)) == len(ids), ids
    for name, service in workers.items():
        settings = _settings(service)
        assert settings.worker_id == name
        # the address peers forward to, and commands in the container call, is this one
        assert service["hostname"] == name
        assert settings.web_host == name
        assert settings.api == f"http://{name}:{settings.web_port}"


def test_one_worker_publishes_its_api_on_the_hosts_loopback() -> None:
    published = {name: s["ports"] for name, s in _workers().items() if s.get("ports")}
    assert len(published) == 1, published
    [(name, ports)] = published.items()
    [mapping] = ports
    host_ip, host_port, container_port = str(mapping).split(":")
    assert host_ip == "127.0.0.1"
    assert int(container_port) == _settings(_workers()[name]).web_port
    assert int(host_port) == Settings().web_port  # what `baton runs ...` on the host calls


# -- start order and health ------------------------------------------------------------------


def test_the_topics_service_runs_once_when_the_brokers_are_healthy() -> None:
    topics = _baton_services()["topics"]
    assert topics.get("restart", "no") == "no"
    assert topics["depends_on"] == {b: {"condition": "service_healthy"} for b in _brokers()}


def test_every_worker_waits_for_healthy_brokers_and_created_topics() -> None:
    for name, service in _workers().items():
        depends = service["depends_on"]
        assert depends["topics"] == {"condition": "service_completed_successfully"}, name
        for broker in _brokers():
            assert depends[broker] == {"condition": "service_healthy"}, (name, broker)


def test_every_worker_is_health_checked_as_the_image_is() -> None:
    image = _healthcheck_command()
    for name, service in _workers().items():
        check = service["healthcheck"]
        assert check["test"] == ["CMD", *image], name
        assert check["interval"] and check["timeout"] and check["retries"] >= 1, name
    # a stopping worker gets its grace and its final commits before Docker's SIGKILL
    grace = max(_settings(s).stop_grace for s in _workers().values())
    for name, service in _workers().items():
        assert service["stop_grace_period"].endswith("s"), name
        assert float(service["stop_grace_period"][:-1]) > grace, name


def _routes(coordinator: bool, home: Path) -> set[tuple[str, str]]:
    """``(method, path)`` of every page a built (not started) worker serves."""
    settings = load_settings({"BATON_HOME": str(home)})
    # Building connects to nothing; the bootstrap is never dialled.
    worker = build_worker(settings, "127.0.0.1:9", coordinator=coordinator, environ={})
    try:
        router = worker.app.web.web_app.router  # type: ignore[attr-defined]
        return {(route.method, route.resource.canonical) for route in router.routes()}
    finally:
        # the app made an event loop (and its self-pipe) that nothing will run: close it
        # here, not in whichever later test the garbage collector happens to meet it
        worker.app.loop.close()


def test_the_image_health_check_asks_a_route_every_worker_serves(tmp_path: Path) -> None:
    path = _healthcheck_path()
    assert path.startswith("/")
    for coordinator in (True, False):  # a processors-only worker serves it too
        routes = _routes(coordinator, tmp_path)
        assert ("GET", path) in routes, (coordinator, sorted(routes))
    assert ("GET", "/no-such-page") not in _routes(True, tmp_path)


# -- commands --------------------------------------------------------------------------------


def _entrypoint() -> click.Group:
    """The click group the image's ENTRYPOINT runs, through the package's console script."""
    entrypoint = _image().final.last("ENTRYPOINT")
    assert entrypoint is not None
    [script] = _exec_form(entrypoint)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts[script].partition(":")
    group = getattr(import_module(module), attribute)
    assert isinstance(group, click.Group)
    return group


def _resolve(group: click.Group, args: list[str]) -> click.Command:
    """The command ``args`` name, walking the group's subcommands; options are not names."""
    command: click.Command = group
    for arg in args:
        if arg.startswith("-"):
            break
        assert isinstance(command, click.Group), f"{command.name} has no subcommand {arg!r}"
        found = command.get_command(click.Context(command), arg)
        assert found is not None, f"{command.name} has no subcommand {arg!r}"
        command = found
    return command


@pytest.mark.parametrize("service", ["topics", "worker-1"])
def test_services_run_real_baton_commands(service: str) -> None:
    group = _entrypoint()
    assert group is main
    args = [str(a) for a in _baton_services()[service]["command"]]
    command = _resolve(group, args)
    assert not isinstance(command, click.Group), f"{args} names a group, not a command"
    # the options given parse (an unknown one would exit 2 before --help)
    result = CliRunner().invoke(group, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert (command.help or "").split("\n")[0] in result.output


def test_the_topics_service_runs_topics_create() -> None:
    command = _resolve(_entrypoint(), _baton_services()["topics"]["command"])
    assert command is topics_group.commands["create"]
    with pytest.raises(AssertionError, match="no subcommand 'no-such'"):
        _resolve(_entrypoint(), ["topics", "no-such"])


def test_the_image_runs_the_worker_by_default() -> None:
    cmd = _image().final.last("CMD")
    assert cmd is not None
    command = _resolve(_entrypoint(), _exec_form(cmd))
    assert command is worker


# -- the image -------------------------------------------------------------------------------


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    final = _image().final
    user = final.last("USER")
    assert user is not None, "the final stage has no USER: it runs as root"
    name, _, group = user.partition(":")
    assert name not in {"root", "0"} and group not in {"root", "0"}
    # nothing after USER switches back
    names = [name for name, _ in final.instructions]
    assert "RUN" not in names[names.index("USER") :]


def test_the_image_ships_only_the_built_virtualenv() -> None:
    image = _image()
    build, final = image.stages[0], image.final
    assert len(image.stages) == 2
    assert build.base == final.base == "python:3.11-slim"  # the venv points at this Python
    installs = [args for name, args in build.instructions if name == "RUN" and "pip" in args]
    # the package, with the extras the build is asked for and none by default
    assert installs == ['/opt/baton/bin/pip install ".${BATON_EXTRAS:+[$BATON_EXTRAS]}"'], installs
    assert ("ARG", 'BATON_EXTRAS=""') in build.instructions
    copies = [args for name, args in final.instructions if name == "COPY"]
    assert copies == [f"--from={build.name} /opt/baton /opt/baton"], copies
    assert final.env["PATH"].startswith("/opt/baton/bin:")
    assert not [args for name, args in final.instructions if "apt-get" in args]


def test_the_build_context_keeps_what_the_build_copies_and_leaves_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            for p in patterns
        )

    for path in (".venv", ".git", ".mypy_cache", "streams/__pycache__", "baton.egg-info"):
        assert ignored(path) or ignored(path.split("/")[-1]), path
    build = _image().stages[0]
    for name, args in build.instructions:
        if name == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is copied but .dockerignore drops it"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose client is not installed",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
