# Debian 13's docker-compose (2.26.1), to run the compose example with it on the machine's
# Docker engine (the socket mounted): scripts/test-docker writes a wrapper that runs it.
ARG BASE
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends docker-compose \
    && rm -rf /var/lib/apt/lists/*
