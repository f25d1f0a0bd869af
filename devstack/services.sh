#!/usr/bin/env bash
# What the test suite talks to: Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 (database
# `test`, trust auth) and Chromium at /usr/bin/chromium. Starts each that is installed but down,
# and installs what is missing with apt-get (Debian, as root). Used by `bash .ci/run` and by
# `python3 dev.py test`.
set -euo pipefail

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "services: $* missing; install it (Debian: apt-get install $*) or the tests that need it fail" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}

wait_for() {  # wait_for NAME COMMAND...: up to 30 s
  local name=$1; shift
  for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "services: $name did not come up" >&2; return 1
}

ensure_redis() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for redis redis-cli -h 127.0.0.1 -p 6379 ping
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql)" ]; then
      apt_install postgresql
      # A fresh cluster asks for passwords on TCP; the tests expect the trust setup of our dev machines.
      local hba; hba=$(ls /etc/postgresql/*/main/pg_hba.conf)
      sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    wait_for postgresql pg_isready -q -h 127.0.0.1 -p 5432
  fi
  psql -h 127.0.0.1 -U postgres -d test -c "SELECT 1" >/dev/null 2>&1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}

ensure_chromium() {  # headless, driven by Playwright (tests/browser.py)
  [ -x /usr/bin/chromium ] || apt_install chromium chromium-driver
}

status=0
ensure_redis || status=1
ensure_postgres || status=1
ensure_chromium || status=1
exit $status
