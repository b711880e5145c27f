#!/usr/bin/env bash
# Install PostgreSQL from Debian packages (if needed) and start a throwaway server on 127.0.0.1:55432
# with database/user/password smids. Used by .ci/run for the two-worker Optuna storage test.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if "$bin/pg_isready" -q -h 127.0.0.1 -p 55432; then
  echo "postgres already running on 127.0.0.1:55432"; exit 0
fi
data=$(mktemp -d /tmp/smids-pg.XXXXXX)
chown postgres "$data"
runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/log" \
  -o "-p 55432 -k /tmp -c listen_addresses=127.0.0.1" -w start >/dev/null
psql_() { runuser -u postgres -- psql -h 127.0.0.1 -p 55432 -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
psql_ -c "CREATE USER smids PASSWORD 'smids'" -c "CREATE DATABASE smids OWNER smids"
echo "postgres ready on 127.0.0.1:55432 (data $data)"
