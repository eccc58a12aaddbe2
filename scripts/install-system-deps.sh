#!/usr/bin/env bash
# Installs what the tests need beyond pip (redis-server, postgresql,
# nats-server, chromium) when this
# runs as root with apt available, as CI does. Elsewhere it only reports what
# is missing: those tests then skip loudly (and fail under CI=true).
set -uo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
    # redis-server's and postgresql's packages may start services on their
    # default ports; tests start their own on free ports.
    exit 0
fi

echo "NOTE: not installing ${missing[*]} (needs root and apt); tests that need them will skip." >&2
