#!/bin/bash
#  wsr-healthcheck [PORT] [PATH] — container health probe without curl.
#
#  Sends "GET PATH HTTP/1.0" to 127.0.0.1:PORT through bash's /dev/tcp and
#  exits 0 only when the status line says 200. Needs nothing beyond what
#  debian:bookworm-slim already has (bash, coreutils' timeout).
#
#  PORT defaults to $WSR_HEALTH_PORT, then $WEBSOCKET_SERVICE_PORT, then 8080;
#  PATH defaults to /readyz (503 while a node drains on SIGTERM).
#  The bridge answers on its --http-port: `wsr-healthcheck 7002`.
set -u
port=${1:-${WSR_HEALTH_PORT:-${WEBSOCKET_SERVICE_PORT:-8080}}}
path=${2:-/readyz}
# shellcheck disable=SC2016  # the inner script expands its own $1 and $2
status=$(timeout 4 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n" "$2" >&3
    IFS= read -r line <&3 || exit 1
    printf "%s" "$line"
' probe "$port" "$path" 2>/dev/null) || { echo "unhealthy: no answer on 127.0.0.1:$port"; exit 1; }
case $status in
    "HTTP/1."?" 200"*) exit 0 ;;
    *) echo "unhealthy: GET $path on port $port: ${status%$'\r'}"; exit 1 ;;
esac
