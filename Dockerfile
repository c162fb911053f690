# baton's worker image: `baton worker` by default, any other `baton` command when given one.
#
#   docker build -t baton .
#   docker run --rm -e BATON_BOOTSTRAP=kafka-1:9092 baton topics create
#
# Two stages: the first builds a virtualenv (compilers and pip's build tools stay there),
# the second copies only that virtualenv onto a clean Python. Both stages must use the same
# base image: the virtualenv points at its Python by path.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# faust-streaming publishes x86_64 wheels only; elsewhere (arm64) pip compiles its C
# extensions, which needs a compiler. Every other dependency installs from wheels. (The
# compiler's version does not matter and never ships, so it is not pinned.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/baton
WORKDIR /src
# Only what `pip install .` reads: the package metadata and the three packages.
COPY pyproject.toml README.md ./
COPY topics topics
COPY processors processors
COPY streams streams
# Optional extras, none by default: `--build-arg BATON_EXTRAS=mcp,tracing` for MCP tool
# servers in tools.yaml and OTLP tracing (pyproject.toml says what each brings).
ARG BATON_EXTRAS=""
RUN /opt/baton/bin/pip install ".${BATON_EXTRAS:+[$BATON_EXTRAS]}"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/baton /opt/baton
# A fixed uid, so volume permissions and runAsNonRoot policies can name it.
RUN groupadd --system --gid 10001 baton \
    && useradd --system --uid 10001 --gid baton --home-dir /var/lib/baton --create-home baton
# BATON_HOME holds each worker's directory (workers/<BATON_WORKER_ID>).
ENV PATH=/opt/baton/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BATON_HOME=/var/lib/baton
# Numeric, so a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/baton
EXPOSE 6066
# Asks the worker's own /healthz, at the address it serves on: the settings are read the way
# the worker reads them (environment, then BATON_CONFIG), so the check follows
# BATON_WEB_HOST and BATON_WEB_PORT. A wildcard bind is asked on loopback.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from streams._config import load_settings; s = load_settings(); host = '127.0.0.1' if s.web_host in ('', '0.0.0.0', '::') else s.web_host; urllib.request.urlopen(f'http://{host}:{s.web_port}/healthz', timeout=4)"]
ENTRYPOINT ["baton"]
CMD ["worker"]
