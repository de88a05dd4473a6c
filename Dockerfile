# nginx (official image) with ngx_http_upstream_jvm_route, built against exactly that nginx.
#
#   docker build -t nginx-jvm-route .
#   docker run -p 8080:80 -e BACKEND1=10.0.0.1:8080 -e BACKEND2=10.0.0.2:8080 nginx-jvm-route
#
# BACKEND1/BACKEND2 are the Tomcats; ROUTE1/ROUTE2 their jvmRoutes (default tomcat01/tomcat02);
# STATUS_ALLOW who may read the status page at /jvm-route/status (default 127.0.0.1).
# A module loads only into the nginx version it was built for: NGINX_VERSION selects both the
# runtime image and the nginx source the module is compiled against.
#
# Build arguments for other bases (the project's tests build this file from local images):
#   NGINX_IMAGE       the runtime image, an nginx image built --with-compat whose entrypoint
#                     renders /etc/nginx/templates (default: the official nginx image)
#   RUST_IMAGE        the builder's base, a Debian with Rust >= 1.82 (default: the official one)
#   NGINX_SOURCE_URL  the source tarball of exactly that nginx version (default: nginx.org)

ARG NGINX_VERSION=1.28.0
ARG RUST_VERSION=1.86
ARG NGINX_IMAGE=nginx:${NGINX_VERSION}-bookworm
ARG RUST_IMAGE=rust:${RUST_VERSION}-slim-bookworm

FROM ${NGINX_IMAGE} AS runtime-nginx

FROM ${RUST_IMAGE} AS builder
ARG NGINX_VERSION
ARG NGINX_SOURCE_URL=https://nginx.org/download/nginx-${NGINX_VERSION}.tar.gz
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base image pins the distribution release; exact package versions would break on its
# point releases, and these packages exist only in the builder.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libclang-dev libpcre2-dev libssl-dev make pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
# The runtime image's own nginx tells which configure arguments the module must match.
COPY --from=runtime-nginx /usr/sbin/nginx /usr/local/bin/nginx-runtime
RUN curl -fsSL "${NGINX_SOURCE_URL}" | tar -xz -C /usr/src
WORKDIR /build
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY src src
COPY benches benches
COPY scripts/lib.sh scripts/build-for-nginx scripts/
RUN scripts/build-for-nginx "/usr/src/nginx-${NGINX_VERSION}" /usr/local/bin/nginx-runtime \
    && cp "target/nginx-${NGINX_VERSION}/release/libngx_http_upstream_jvm_route_module.so" \
        /ngx_http_upstream_jvm_route_module.so

FROM runtime-nginx
COPY --from=builder /ngx_http_upstream_jvm_route_module.so /usr/lib/nginx/modules/
COPY nginx-conf/docker/nginx.conf /etc/nginx/nginx.conf
COPY nginx-conf/docker/default.conf.template /etc/nginx/templates/default.conf.template
ENV ROUTE1=tomcat01 \
    ROUTE2=tomcat02 \
    STATUS_ALLOW=127.0.0.1
EXPOSE 80
