# A local stand-in for the official Rust image: Debian with the test machine's own Rust toolchain
# (its bin/ and lib/, copied into the build context by scripts/test-docker) and the machine's CA
# bundle, which HTTPS to the crate registry needs behind a TLS-inspecting proxy. The project's
# Dockerfile is then built with RUST_IMAGE set to it.
ARG BASE
FROM ${BASE}
COPY rust /usr/local/rust
COPY host-ca.crt /etc/ssl/host-ca.crt
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt \
    SSL_CERT_FILE=/etc/ssl/host-ca.crt
