# A local stand-in for the official nginx image (no image registry is reachable from the test
# machine): nginx built from the source tarball with the official image's layout and a subset of
# its configure arguments (--with-compat among them), the nginx user, and an entrypoint that
# renders /etc/nginx/templates/*.template into /etc/nginx/conf.d with envsubst, as the official
# image's does. The project's Dockerfile is then built with NGINX_IMAGE set to it.
ARG BASE
FROM ${BASE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends \
        ca-certificates curl gcc libc6-dev libpcre2-dev libssl-dev make zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
ARG NGINX_VERSION
ARG NGINX_SOURCE_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /usr/src
RUN curl -fsSL "${NGINX_SOURCE_URL}" | tar -xz
WORKDIR /usr/src/nginx-${NGINX_VERSION}
RUN ./configure --prefix=/etc/nginx --sbin-path=/usr/sbin/nginx \
        --modules-path=/usr/lib/nginx/modules --conf-path=/etc/nginx/nginx.conf \
        --error-log-path=/var/log/nginx/error.log --http-log-path=/var/log/nginx/access.log \
        --pid-path=/run/nginx.pid --lock-path=/run/nginx.lock \
        --http-client-body-temp-path=/var/cache/nginx/client_temp \
        --http-proxy-temp-path=/var/cache/nginx/proxy_temp \
        --http-fastcgi-temp-path=/var/cache/nginx/fastcgi_temp \
        --http-uwsgi-temp-path=/var/cache/nginx/uwsgi_temp \
        --http-scgi-temp-path=/var/cache/nginx/scgi_temp \
        --user=nginx --group=nginx --with-compat --with-threads --with-http_realip_module \
        --with-http_ssl_module --with-http_stub_status_module --with-http_v2_module \
        --with-stream --with-stream_ssl_module >/dev/null \
    && make -j"$(nproc)" >/dev/null \
    && make install >/dev/null

FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends gettext-base libpcre2-8-0 libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system nginx \
    && useradd --system --gid nginx --no-create-home --home /nonexistent --shell /bin/false nginx \
    && mkdir -p /var/cache/nginx /var/log/nginx /usr/lib/nginx/modules /etc/nginx/conf.d \
        /docker-entrypoint.d /etc/nginx \
    && ln -s ../../usr/lib/nginx/modules /etc/nginx/modules \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY --from=build /usr/sbin/nginx /usr/sbin/nginx
COPY --from=build /etc/nginx /etc/nginx
COPY docker-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
