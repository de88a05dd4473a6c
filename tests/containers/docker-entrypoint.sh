#!/bin/sh
# The local nginx image's entrypoint (see nginx.Dockerfile): as the official image's does, it
# renders every /etc/nginx/templates/NAME.template into /etc/nginx/conf.d/NAME, substituting
# only the environment variables that are defined (so nginx's own $variables stay), then runs
# the command.
set -eu
if [ "${1:-}" = "nginx" ] && [ -d /etc/nginx/templates ]; then
    defined="$(env | cut -d= -f1 | sed 's/^/${/; s/$/}/' | tr '\n' ' ')"
    for template in /etc/nginx/templates/*.template; do
        [ -f "$template" ] || continue
        output="/etc/nginx/conf.d/$(basename "$template" .template)"
        envsubst "$defined" <"$template" >"$output"
        echo "$0: rendered $template to $output"
    done
fi
exec "$@"
