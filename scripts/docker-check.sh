#!/usr/bin/env bash
# docker-check.sh - build docker/Dockerfile for real and run the Slurm path inside a container.
#
#   bash scripts/docker-check.sh        # from anywhere in the checkout; root on Debian/Ubuntu,
#                                       # or any user who may use an already running Docker engine
#
# Written for Linux hosts (apt-get, debootstrap); on macOS/Windows use the `docker build`/`docker run`
# commands of docker/README.md directly.
#
# 1. Docker: installs docker.io with apt-get if there is no engine, and starts dockerd if none answers
#    (that dockerd is stopped again at the end, unless DOCKER_CHECK_KEEP_DAEMON=1).
# 2. Base image debian:12: when it is missing and cannot be pulled (no registry reachable), it is made
#    locally with debootstrap (--variant=minbase) from the Debian mirror apt uses here, then `docker import`.
# 3. Builds the image with BuildKit. The host's CA bundle and pip configuration are handed to the build as
#    the secrets "ca" and "pipconf" (see docker/README.md), so it also builds behind TLS interception.
#    Layers are reused: a rebuild after a code change only redoes the last layers.
# 4. In one container (its own network namespace, nothing mounted from the host): starts the cluster with
#    scripts/local-slurm.sh (the image's entrypoint), runs `pytest -m slurm tests/slurm`, runs
#    examples/linear_pymc.py with --executor slurm and checks that sacct recorded its jobs, then runs a
#    small study as an unprivileged user and checks that sacct shows that user's jobs.
# 5. Prints the time of each step. The container is removed; the image stays for the next run.
#
# Settings (environment):
#   DOCKER_CHECK_IMAGE        image tag to build, default bayesim-slurm:check
#   DOCKER_CHECK_EXTRAS       pip extras for the image (build argument EXTRAS), default all
#   DOCKER_CHECK_MIRROR       Debian mirror for debootstrap, default: the one in /etc/apt/sources.list*
#   DOCKER_CHECK_CA           extra CA bundle (PEM) for pip, default /etc/ssl/certs/ca-certificates.crt
#                             if it exists; set it empty to pass none
#   DOCKER_CHECK_PIPCONF      pip configuration file, default $PIP_CONFIG_FILE or /etc/pip.conf if it
#                             exists; set it empty to pass none
#   DOCKER_CHECK_BUILD_NETWORK  network of the build's RUN steps, default host (only at build time)
#   DOCKER_CHECK_SLURM_TESTS  1 (default) = run `pytest -m slurm` in the container, 0 = skip it
#   DOCKER_CHECK_PYTEST_ARGS  extra pytest arguments for the Slurm tests, default empty
#   DOCKER_CHECK_KEEP_DAEMON  1 = leave a dockerd started by this script running
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${DOCKER_CHECK_IMAGE:-bayesim-slurm:check}
EXTRAS=${DOCKER_CHECK_EXTRAS:-all}
BASE=debian:12
BUILD_NETWORK=${DOCKER_CHECK_BUILD_NETWORK:-host}
if [ -z "${DOCKER_CHECK_CA+set}" ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  DOCKER_CHECK_CA=/etc/ssl/certs/ca-certificates.crt
fi
if [ -z "${DOCKER_CHECK_PIPCONF+set}" ]; then
  if [ -n "${PIP_CONFIG_FILE:-}" ] && [ -s "$PIP_CONFIG_FILE" ]; then
    DOCKER_CHECK_PIPCONF=$PIP_CONFIG_FILE
  elif [ -s /etc/pip.conf ]; then
    DOCKER_CHECK_PIPCONF=/etc/pip.conf
  fi
fi
CA=${DOCKER_CHECK_CA:-}
PIPCONF=${DOCKER_CHECK_PIPCONF:-}

log() { echo "[docker-check] $*" >&2; }
die() { echo "[docker-check] ERROR: $*" >&2; exit 1; }
now() { date +%s; }
TIMES=()
timed() {  # label command... : run it, remember its duration
  local label=$1 t0 rc=0
  shift
  t0=$(now)
  "$@" || rc=$?
  TIMES+=("$(printf '%-44s %5ss' "$label" "$(($(now) - t0))")")
  return $rc
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else die "needs root for: $*"; fi; }

DOCKER=docker
DOCKERD_PID=
CONTAINER=
WORK=
cleanup() {
  local rc=$?
  if [ -n "$CONTAINER" ]; then "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  if [ -n "$DOCKERD_PID" ] && [ "${DOCKER_CHECK_KEEP_DAEMON:-0}" != 1 ]; then
    log "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do [ -d "/proc/$DOCKERD_PID" ] || break; sleep 0.2; done
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. engine
install_docker() {
  command -v dockerd >/dev/null && return 0
  command -v apt-get >/dev/null || die "no Docker engine and no apt-get to install docker.io; install Docker first"
  log "installing docker.io (apt-get) ..."
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null 2>&1 \
    || { as_root apt-get update >/dev/null 2>&1
         as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null; } \
    || die "apt-get install docker.io failed"
}

pick_client() {  # a docker client that can build with BuildKit: one with buildx, or one older than 23
  local c v
  for c in "$(command -v docker || true)" /usr/bin/docker; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if "$c" buildx version >/dev/null 2>&1; then DOCKER=$c; return 0; fi
    v=$("$c" --version 2>/dev/null | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')
    if [ -n "$v" ] && [ "$v" -lt 23 ]; then DOCKER=$c; return 0; fi
  done
  die "no docker client with BuildKit: install the buildx plugin (docker-buildx-plugin)"
}

start_engine() {
  "$DOCKER" info >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "the Docker engine does not answer and only root can start it here"
  local logf=/var/log/docker-check-dockerd.log
  log "starting dockerd (log: $logf)"
  setsid dockerd >"$logf" 2>&1 </dev/null &
  DOCKERD_PID=$!
  for _ in $(seq 1 150); do
    "$DOCKER" info >/dev/null 2>&1 && { log "dockerd up ($("$DOCKER" info -f '{{.Driver}}, cgroup {{.CgroupDriver}}'))"; return 0; }
    [ -d "/proc/$DOCKERD_PID" ] || break
    sleep 0.2
  done
  tail -20 "$logf" >&2 || true
  die "dockerd did not start (log: $logf)"
}

# ---------------------------------------------------------------- 2. base image
apt_uris() {  # every URI in apt's sources
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([a-z+]+:\/\/[^[:space:]]+).*/\2/p; s/^URIs:[[:space:]]*//p' "$f"
  done | tr ' ' '\n' | sed 's:/*$::'
}

pull_base() {
  if command -v timeout >/dev/null; then timeout 120 "$DOCKER" pull -q "$BASE"; else "$DOCKER" pull -q "$BASE"; fi
}

make_base() {
  if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then log "base image $BASE present"; return 0; fi
  if pull_base >/dev/null 2>&1; then log "pulled $BASE"; return 0; fi
  log "cannot pull $BASE: making it with debootstrap"
  command -v debootstrap >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends debootstrap >/dev/null || die "apt-get install debootstrap failed"
  local mirror security root
  mirror=${DOCKER_CHECK_MIRROR:-$(apt_uris | grep -E '/debian$' | head -1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=$(apt_uris | grep -E '/debian-security$' | head -1)
  security=${security:-http://deb.debian.org/debian-security}
  WORK=$(mktemp -d /var/tmp/docker-check.XXXXXX)
  root=$WORK/rootfs
  log "debootstrap --variant=minbase bookworm from $mirror"
  as_root debootstrap --variant=minbase bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # apt sources as in the official image (main archive, updates, security); no package caches
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | "$DOCKER" import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
  rm -rf "$WORK"
  WORK=
  log "made $BASE locally ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# ---------------------------------------------------------------- 3. build
build_image() {
  local args=(build --network "$BUILD_NETWORK" --progress plain --build-arg "EXTRAS=$EXTRAS"
              -f docker/Dockerfile -t "$IMAGE")
  if [ -n "$CA" ]; then
    [ -s "$CA" ] || die "DOCKER_CHECK_CA=$CA: no such file"
    args+=(--secret "id=ca,src=$CA"); log "build secret ca: $CA"
  fi
  if [ -n "$PIPCONF" ]; then
    [ -s "$PIPCONF" ] || die "DOCKER_CHECK_PIPCONF=$PIPCONF: no such file"
    args+=(--secret "id=pipconf,src=$PIPCONF"); log "build secret pipconf: $PIPCONF"
  fi
  local old new
  old=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  log "docker ${args[*]} ."
  DOCKER_BUILDKIT=1 "$DOCKER" "${args[@]}" . 2>&1 | sed -u 's/^/  | /' | grep --line-buffered -vE '^  \| #[0-9]+ (sha256|extracting|transferring)' \
    || die "docker build failed"
  new=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE")
  # the previous build of this tag is now untagged: remove it (and the layers only it used)
  if [ -n "$old" ] && [ "$old" != "$new" ]; then "$DOCKER" rmi "$old" >/dev/null 2>&1 || true; fi
  log "image $IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---------------------------------------------------------------- 4. in the container
# Runs after the entrypoint has started the cluster. Every step runs even if an earlier one failed;
# each prints "@@ ok|FAILED SECONDS LABEL" for the table, and the script exits 1 if any failed.
INNER=$(cat <<'INNER_EOF'
set -uo pipefail
FAIL=0
T0=$START
record() { echo "@@ $1 $(($(date +%s) - T0)) $2"; [ "$1" = ok ] || FAIL=1; T0=$(date +%s); }
step() {  # label function
  echo; echo "== $1"
  ( set -e; "$2" )   # not in an if/&&: that would switch set -e off inside
  if [ $? = 0 ]; then record ok "$1"; else record FAILED "$1"; fi
}

cluster() {
  scripts/local-slurm.sh status
  sacctmgr -n -P list cluster format=cluster
}

slurm_tests() {
  # shellcheck disable=SC2086
  pytest -q -p no:cacheprovider -m slurm tests/slurm --durations=5 $PYTEST_ARGS
}

example_study() {
  local out=/root/example-results/linear_pymc name n_done n_bad
  bayesim-hpc run examples/linear_pymc.py --executor slurm --max-running 2 --result-dir "$out" --no-progress
  bayesim-hpc status "$out"
  name=$(python -c 'import sys; from bayesim_hpc.resultdir import ResultDir; from bayesim_hpc.executors.slurm import job_name; print(job_name(ResultDir(sys.argv[1])))' "$out")
  sacct -a -X -P -S now-1days -o JobID,JobName,User,State,ExitCode --name "$name" | tee /tmp/sacct.txt
  n_done=$(awk -F'|' 'NR > 1 && $4 == "COMPLETED"' /tmp/sacct.txt | wc -l)
  n_bad=$(awk -F'|' 'NR > 1 && $4 != "COMPLETED"' /tmp/sacct.txt | wc -l)
  if [ "$n_done" -lt 1 ] || [ "$n_bad" != 0 ]; then
    echo "sacct: $n_done COMPLETED, $n_bad other for $name"; return 1
  fi
  echo "sacct: $n_done array elements of $name COMPLETED"
  python - "$out" <<'PY'
import sys
from bayesim_hpc import load_results
res = load_results(sys.argv[1])
ok = int((res.summary["status"] == "success").sum())
print(f"{ok}/{len(res.summary)} tasks succeeded")
print(res.cells[["data_n", "n_success", "bias__slope", "coverage__by_param__slope"]].to_string(index=False))
assert ok == len(res.summary) == 20, res.summary["status"].value_counts()
PY
}

unprivileged() {
  id simuser >/dev/null 2>&1 || useradd -m -s /bin/bash simuser
  runuser -u simuser -- env HOME=/home/simuser bash -c '
    set -euo pipefail
    cd ~
    bayesim-hpc run /opt/bayesim-hpc/examples/linear_mock.py --executor slurm --max-running 2 --result-dir ~/mock --no-progress
    bayesim-hpc status ~/mock
    test "$(stat -c %U ~/mock)" = simuser'
  sacct -X -n -P -S now-1days -u simuser -o JobID,User,State | tee /tmp/sacct-user.txt
  awk -F'|' '$2 == "simuser" && $3 == "COMPLETED"' /tmp/sacct-user.txt | grep -q . \
    || { echo "sacct shows no COMPLETED job of simuser"; return 1; }
}

record ok "cluster start (entrypoint, local-slurm.sh)"
step "cluster status, sacctmgr" cluster
if [ "$RUN_SLURM_TESTS" = 1 ]; then step "pytest -m slurm tests/slurm" slurm_tests; fi
step "examples/linear_pymc.py on Slurm + sacct" example_study
step "a study submitted by an unprivileged user" unprivileged
exit $FAIL
INNER_EOF
)

run_container() {
  CONTAINER=bayesim-check-$$
  local rc=0 logf status secs label
  logf=$(mktemp "${TMPDIR:-/tmp}/docker-check.XXXXXX")
  # own network namespace (no --network host) and no host mounts: the host's own test cluster is untouched
  "$DOCKER" run --name "$CONTAINER" --hostname bayesim-check -e PYTEST_ARGS="${DOCKER_CHECK_PYTEST_ARGS:-}" \
    -e RUN_SLURM_TESTS="${DOCKER_CHECK_SLURM_TESTS:-1}" -e START="$(now)" "$IMAGE" bash -c "$INNER" 2>&1 \
    | tee "$logf" | grep --line-buffered -v '^@@ ' || rc=$?
  while read -r _ status secs label; do
    TIMES+=("$(printf '%-44s %5ss  %s' "  $label" "$secs" "$status")")
  done < <(grep '^@@ ' "$logf")
  rm -f "$logf"
  "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1 || true
  CONTAINER=
  return "$rc"
}

# ---------------------------------------------------------------- main
T_ALL=$(now)
timed "docker.io install (if missing)" install_docker
pick_client
timed "dockerd start (if none answers)" start_engine
log "docker client $DOCKER ($("$DOCKER" --version)), engine $("$DOCKER" version -f '{{.Server.Version}}')"
timed "base image $BASE" make_base
timed "image build ($IMAGE)" build_image
rc=0
timed "container (total)" run_container || rc=$?
TIMES+=("$(printf '%-44s %5ss' "all" "$(($(now) - T_ALL))")")
echo
echo "docker-check timings:"
printf '  %s\n' "${TIMES[@]}"
[ "$rc" = 0 ] && echo "docker-check: OK" || echo "docker-check: FAILED (container exit $rc)"
exit "$rc"
