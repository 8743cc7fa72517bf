# Sourced by deploy/test.sh: a PostgreSQL cluster of the tests' own, on
# loopback, with password (SCRAM) login, in a temporary folder under
# /var/tmp. `pg_test_start` creates and starts it and exports
#   CALLREC_TEST_POSTGRES                postgres://callrec_test@127.0.0.1:PORT/postgres (no password)
#   CALLREC_TEST_POSTGRES_PASSWORD_FILE  the file holding the password
# (the tests create a database of their own in it and drop it);
# `pg_test_stop` stops the server by its pid and removes the folder.
# Usable by hand too:  . deploy/test-postgres.sh; pg_test_start; ...; pg_test_stop

pg_test_start() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -z $bin || ! -x $bin/initdb ]]; then
        echo "test-postgres: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (Debian package postgresql)" >&2
        return 1
    fi
    PG_TEST_DIR=$(mktemp -d /var/tmp/callrec-test-pg.XXXXXX)
    chmod 755 "$PG_TEST_DIR"
    local pwfile=$PG_TEST_DIR/password
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$pwfile"
    # The server refuses to run as root: it runs as the postgres user then.
    local as=()
    if [[ $(id -u) -eq 0 ]]; then
        as=(runuser -u postgres --)
        chown postgres "$PG_TEST_DIR"
    fi
    chmod 644 "$pwfile"
    local port
    port=$(perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Proto=>"tcp", LocalAddr=>"127.0.0.1", LocalPort=>0, Listen=>1)->sockport')
    "${as[@]}" "$bin/initdb" -D "$PG_TEST_DIR/data" -U callrec_test --auth=scram-sha-256 \
        --pwfile="$pwfile" --no-sync -E UTF8 --locale=C.UTF-8 >"$PG_TEST_DIR/initdb.log" 2>&1 || {
        cat "$PG_TEST_DIR/initdb.log" >&2
        return 1
    }
    # Throwaway data: no fsync; room for the connections of tests running in parallel.
    "${as[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -w -t 60 -l "$PG_TEST_DIR/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PG_TEST_DIR -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || {
        cat "$PG_TEST_DIR/server.log" >&2
        return 1
    }
    PG_TEST_PID=$(head -n 1 "$PG_TEST_DIR/data/postmaster.pid")
    export CALLREC_TEST_POSTGRES="postgres://callrec_test@127.0.0.1:$port/postgres"
    export CALLREC_TEST_POSTGRES_PASSWORD_FILE=$pwfile
    echo "test-postgres: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $PG_TEST_PID)"
}

pg_test_stop() {
    [[ -n ${PG_TEST_PID:-} ]] || return 0
    # SIGINT: the server's fast shutdown (ends sessions, then exits).
    kill -INT "$PG_TEST_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$PG_TEST_PID" 2>/dev/null || break
        sleep 0.1
    done
    rm -rf "$PG_TEST_DIR"
    PG_TEST_PID=""
}
