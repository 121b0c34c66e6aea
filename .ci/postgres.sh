#!/usr/bin/env bash
# Install PostgreSQL from Debian packages (if missing), start it without systemd, create a
# database for the traffic-store tests and print its SQLAlchemy URL on stdout (all else: stderr).
#
#   export TUNELOOP_TEST_POSTGRES_URL=$(.ci/postgres.sh)   # then: make test
#
# Runs as root (apt-get, su postgres) in a container; idempotent: a second call finds the
# cluster running and the database there, and prints the same URL.
set -euo pipefail
DB="${TUNELOOP_PG_DB:-tuneloop_test}"
USER_="${TUNELOOP_PG_USER:-tuneloop}"
PASS="${TUNELOOP_PG_PASSWORD:-tuneloop}"
log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "run as root (installs Debian packages and starts the server as user postgres)"; exit 2
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
fi
VER="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  log "creating cluster $VER/main"
  pg_createcluster "$VER" main >&2
fi
read -r ver cluster port status _rest < <(pg_lsclusters -h | head -1)
if [ "$status" != online ]; then
  log "starting cluster $ver/$cluster on port $port"
  pg_ctlcluster "$ver" "$cluster" start >&2
fi
for _ in $(seq 1 60); do
  su postgres -c "pg_isready -q -p $port" && break
  sleep 0.5
done
su postgres -c "pg_isready -q -p $port" || { log "server on port $port does not accept connections"; exit 2; }

psql_() { su postgres -c "psql -v ON_ERROR_STOP=1 -q -t -A -p $port $*"; }
if [ "$(psql_ "-c \"SELECT 1 FROM pg_roles WHERE rolname='$USER_'\"")" != 1 ]; then
  psql_ "-c \"CREATE ROLE $USER_ LOGIN PASSWORD '$PASS'\"" >&2
fi
if [ "$(psql_ "-c \"SELECT 1 FROM pg_database WHERE datname='$DB'\"")" != 1 ]; then
  psql_ "-c \"CREATE DATABASE $DB OWNER $USER_\"" >&2
fi
echo "postgresql+psycopg://$USER_:$PASS@127.0.0.1:$port/$DB"
