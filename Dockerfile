# The image every service of docker-compose.yml runs: the `edge` console script, installed
# as the README installs it, with the docker view of the default topology for `edge dns`.
FROM python:3.11-slim

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
