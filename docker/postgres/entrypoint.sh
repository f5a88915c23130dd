#!/bin/bash
# Starts PostgreSQL in PGDATA, first making the cluster as the official postgres image does: superuser
# POSTGRES_USER (default postgres) with POSTGRES_PASSWORD, database POSTGRES_DB (default the user's
# name), password logins over TCP, then the *.sql and *.sh files of /docker-entrypoint-initdb.d in order.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

say() { printf 'entrypoint: %s\n' "$*" >&2; }

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
[ "${1:-}" = postgres ] && shift

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        say "POSTGRES_PASSWORD is empty: set it (the database accepts password logins only)"
        exit 1
    fi
    say "making the cluster in $PGDATA"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    # On the socket only while it is set up, so that no client (nor a healthcheck over TCP) sees it half made.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql=(psql -v ON_ERROR_STOP=1 -X -q --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case $file in
        *.sql) say "running $file" && "${psql[@]}" --dbname "$POSTGRES_DB" -f "$file" ;;
        *.sh) say "running $file" && bash "$file" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    say "the cluster is ready"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
