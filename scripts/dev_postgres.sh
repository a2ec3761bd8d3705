#!/usr/bin/env bash
# Start a local PostgreSQL for developing autobatch, without Docker, using Debian's cluster
# tools (postgresql-common). The last line of stdout is the storage URL:
#
#   export AUTOBATCH_STORAGE=$(scripts/dev_postgres.sh | tail -1)
#
# On the chosen port (--port N, else $PGPORT, else 5432):
#   - a server already accepts connections: use it;
#   - else a cluster is configured for the port: start it;
#   - else create the cluster "autobatch" for the port, with trust authentication on
#     127.0.0.1 and ::1 (this cluster only: anyone on this machine can connect as any
#     user, so for development only), and start it.
# Then create the database "autobatch" where missing. Creating or starting a cluster needs
# root or the postgres user. Progress goes to stderr.
#
# To remove the cluster this creates: pg_dropcluster --stop VERSION autobatch
set -euo pipefail

readonly DB=autobatch
readonly CLUSTER=autobatch
# Where Debian installs the server binaries, one directory per major version.
readonly PG_LIBDIR=${DEV_POSTGRES_LIBDIR:-/usr/lib/postgresql}

say() { printf '%s\n' "dev_postgres: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    cat <<EOF
usage: $0 [--port PORT]

Starts (creating it if needed) a local PostgreSQL cluster on 127.0.0.1:PORT for
development and prints postgresql://postgres@127.0.0.1:PORT/$DB as the last line.
PORT: --port, else \$PGPORT, else 5432.
EOF
}

port=${PGPORT:-5432}
while [ $# -gt 0 ]; do
    case $1 in
        -p | --port)
            [ $# -ge 2 ] || { usage >&2; exit 2; }
            port=$2
            shift 2
            ;;
        --port=*)
            port=${1#--port=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            say "unknown argument: $1"
            usage >&2
            exit 2
            ;;
    esac
done
if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    say "not a port number: $port"
    exit 2
fi
readonly port
readonly url="postgresql://postgres@127.0.0.1:$port/$DB"

# The newest installed server version, or nothing.
newest_version() {
    local dir version=""
    for dir in "$PG_LIBDIR"/*/bin/postgres; do
        [ -x "$dir" ] || continue
        dir=${dir%/bin/postgres}
        dir=${dir##*/}
        if [ -z "$version" ] || [ "${dir%%.*}" -gt "${version%%.*}" ]; then
            version=$dir
        fi
    done
    printf '%s' "$version"
}

# A client program: from the newest server version's directory, else from PATH.
client() {
    local name=$1 version
    version=$(newest_version)
    if [ -n "$version" ] && [ -x "$PG_LIBDIR/$version/bin/$name" ]; then
        printf '%s' "$PG_LIBDIR/$version/bin/$name"
    elif command -v "$name" > /dev/null; then
        command -v "$name"
    fi
}

# Whether a PostgreSQL server accepts connections on 127.0.0.1:$port.
accepting() {
    local pg_isready
    pg_isready=$(client pg_isready)
    if [ -n "$pg_isready" ]; then
        "$pg_isready" -q -h 127.0.0.1 -p "$port" -t 3
    else
        port_open
    fi
}

# Whether anything at all listens on 127.0.0.1:$port.
port_open() {
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null
}

# Runs a command as the postgres user: directly when we are it, through runuser as root.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Creates the database if missing, over TCP as postgres (the URL's own way in), else as
# the postgres user over the Unix socket. Returns non-zero where neither can.
ensure_database() {
    local psql sql exists
    psql=$(client psql)
    [ -n "$psql" ] || return 1
    sql="SELECT 1 FROM pg_database WHERE datname = '$DB'"
    local -a tcp=("$psql" -X -q -w -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    local -a sock=(as_postgres "$psql" -X -q -w -p "$port" -d postgres)
    local -a how
    if exists=$("${tcp[@]}" -tAc "$sql" 2> /dev/null); then
        how=("${tcp[@]}")
    elif can_manage && exists=$("${sock[@]}" -tAc "$sql" 2> /dev/null); then
        how=("${sock[@]}")
    else
        return 1
    fi
    if [ "$exists" != 1 ]; then
        say "creating database $DB"
        "${how[@]}" -c "CREATE DATABASE $DB" > /dev/null
    fi
}

can_manage() {
    [ "$(id -u)" -eq 0 ] || [ "$(id -un)" = postgres ]
}

wait_until_accepting() {
    local i
    for i in $(seq 1 30); do
        accepting && return 0
        [ "$i" -lt 30 ] && sleep 1
    done
    return 1
}

# 1. A server is there already.
if accepting; then
    say "a server already accepts connections on 127.0.0.1:$port"
    if ! ensure_database; then
        say "warning: could not check or create database $DB as user postgres on" \
            "127.0.0.1:$port (password required?); create it yourself if needed"
    fi
    printf '%s\n' "$url"
    exit 0
fi

# 2. Start or create a cluster: that needs the server installed, and root or postgres.
version=$(newest_version)
if [ -z "$version" ] || ! command -v pg_lsclusters > /dev/null \
    || ! command -v pg_createcluster > /dev/null || ! command -v pg_ctlcluster > /dev/null; then
    say "PostgreSQL server is not installed; install it with:"
    say "  sudo apt-get install -y postgresql postgresql-common"
    exit 1
fi
if ! can_manage; then
    die "starting or creating a cluster needs root or the postgres user:" \
        "run 'sudo $0 --port $port' or 'sudo -u postgres $0 --port $port'"
fi

# The cluster configured for this port, as "VERSION NAME STATUS", if any. (awk reads
# all its input: an early exit could kill pg_lsclusters with SIGPIPE, fatal under pipefail.)
existing=$(pg_lsclusters --no-header | awk -v p="$port" '!found && $3 == p { print $1, $2, $4; found = 1 }')
if [ -n "$existing" ]; then
    read -r c_version c_name c_status <<< "$existing"
    if [[ $c_status == online* ]]; then
        die "cluster $c_version/$c_name is online on port $port but does not accept" \
            "connections on 127.0.0.1 (listen_addresses?); see pg_lsclusters"
    fi
    say "starting cluster $c_version/$c_name on port $port"
    pg_ctlcluster --skip-systemctl-redirect "$c_version" "$c_name" start >&2
else
    if port_open; then
        die "port $port is in use by something that is not PostgreSQL; choose another" \
            "with --port"
    fi
    other=$(pg_lsclusters --no-header | awk -v v="$version" -v n="$CLUSTER" '$1 == v && $2 == n { print $3 }')
    if [ -n "$other" ]; then
        die "cluster $version/$CLUSTER exists already on port $other: run" \
            "'$0 --port $other', or remove it with 'pg_dropcluster --stop $version $CLUSTER'"
    fi
    say "creating cluster $version/$CLUSTER on port $port (trust authentication on 127.0.0.1)"
    # initdb options after --: peer on the Unix socket, trust over TCP. The default
    # pg_hba.conf has host lines for 127.0.0.1/32 and ::1/128 only, and the server listens
    # on localhost only, so trust reaches no other machine. This cluster's pg_hba.conf
    # only; no other cluster's authentication changes.
    pg_createcluster "$version" "$CLUSTER" -p "$port" -- --auth-local=peer --auth-host=trust >&2
    say "starting cluster $version/$CLUSTER"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$CLUSTER" start >&2
fi

wait_until_accepting || die "the server on port $port did not come up; see pg_lsclusters and its log"
ensure_database || die "could not create database $DB on port $port"
printf '%s\n' "$url"
