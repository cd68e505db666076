#!/bin/sh
# The "engine": serves its version and loaded scripts over HTTP on :7777.
echo "game server $(cat /game/scripts/VERSION) starting"
while true; do
  { printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n'; cat /game/scripts/VERSION; } \
    | nc -l -p 7777 >/dev/null 2>&1
done
