# The image every service of docker-compose.yml runs: the `edge` console script, installed
# as the README installs it, with the docker view of the default topology for `edge dns`.
# BASE: another image with Python 3.11 as `python` whose pip may install into it (CI
# builds one from Debian's packages where no image registry is reachable: .ci/compose).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN python -m pip install . \
    && install -D -m 0644 origin/topologies/docker.toml /etc/edge/topology.docker.toml

# Not root. /data and /cache belong to it so that the named volumes mounted there
# (which start as copies of these directories) are writable.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data edge \
    && install -d -o edge -g edge -m 0755 /data /cache
USER edge
WORKDIR /data

CMD ["edge", "--help"]
