#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, against SQLite and against a real
# PostgreSQL server started here on 127.0.0.1 for the duration of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

scratch=$(mktemp -d)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_port=${XDSI_TEST_POSTGRES_PORT:-15432}
run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }

if [ "$(id -u)" = 0 ]; then chown postgres "$scratch"; fi
run_pg "$pg_bin/initdb -D $scratch/data -A trust -U postgres -E UTF8 --no-locale" >/dev/null
run_pg "$pg_bin/pg_ctl -D $scratch/data -l $scratch/log -w -o \"-p $pg_port -c listen_addresses=127.0.0.1 -k $scratch\" start" >/dev/null
stop_pg() { run_pg "$pg_bin/pg_ctl -D $scratch/data -w stop -m fast" >/dev/null || true; rm -rf "$scratch"; }
trap stop_pg EXIT

export XDSI_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/postgres"
.venv/bin/python -m pytest -q "$@"
