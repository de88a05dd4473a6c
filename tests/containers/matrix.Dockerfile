# The containers of the nginx version matrix (scripts/test-matrix), from a local Debian base
# image (scripts/docker-base). Two targets:
#   build: builds the module and its Debian package for the distribution's nginx
#          (scripts/package-deb), with the host's Rust toolchain mounted;
#   test:  runs the integration suite against the nginx that `apt-get install ./PACKAGE.deb`
#          brings into it; it has what the tests need besides nginx, and no nginx yet.
ARG BASE
FROM ${BASE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends \
        binutils ca-certificates curl dpkg-dev gcc libclang-dev libpcre2-dev libssl-dev \
        lintian make nginx nginx-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

FROM ${BASE} AS test
# tomcat10-user (Tomcat 10.1) or tomcat11-user; jetty9 (Jetty 9.4) in every release.
ARG TOMCAT=tomcat10
# The package lists stay: each run installs the package under test with apt.
# hadolint ignore=DL3008,DL3009
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends \
        ca-certificates chromium chromium-driver curl dnsmasq-base gettext-base jetty9 \
        nghttp2-client procps python3 \
        python3-prometheus-client "${TOMCAT}-user"
