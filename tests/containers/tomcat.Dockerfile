# A local stand-in for the official Tomcat image: Debian's Tomcat (tomcat10-user: 10.1, or
# tomcat11-user) with a CATALINA_BASE at /usr/local/tomcat, where the official image has its
# installation, so that the compose example's mounts (conf/server.xml, webapps/ROOT) fit, and
# `catalina.sh run` as the command.
ARG BASE
FROM ${BASE}
ARG TOMCAT=tomcat10
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends "${TOMCAT}-user" \
    && rm -rf /var/lib/apt/lists/* \
    && "${TOMCAT}-instance-create" /usr/local/tomcat >/dev/null \
    && ln -s "/usr/share/${TOMCAT}" /usr/share/tomcat
ENV CATALINA_HOME=/usr/share/tomcat \
    CATALINA_BASE=/usr/local/tomcat \
    PATH=/usr/share/tomcat/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /usr/local/tomcat
EXPOSE 8080
CMD ["catalina.sh", "run"]
