#!/usr/bin/env bash
# Build the image and check what a platform relies on: non-root, PORT, /readyz, HEALTHCHECK,
# SIGTERM within 5 s, reload without a shell, no packaging tools, image size.
#
#   deploy/test-image.sh            # docker when its daemon answers, else podman
#   BASE=python:3.11-slim-bookworm deploy/test-image.sh
#
# Works offline: the wheels are downloaded by the host's pip (constraints.txt, which knows the
# host's index and proxy) and served to the build on 127.0.0.1, and when no BASE is given and
# python:3.11-slim-bookworm cannot be pulled, a base is made from Debian packages with mmdebstrap
# (CPython 3.11, as the slim image has) and imported as localhost/stageprobe-base:bookworm.
# Every container runs with host networking on loopback ports picked here.
#
# Exit codes: 0 every check passed, 1 a check failed, 77 no working builder (docker daemon or
# podman) on this machine. Output: one line per check, `ok` or `FAIL`, with the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-localhost/stageprobe:image-test}
MAX_SIZE_MB=${MAX_SIZE_MB:-400}
WORK=$(mktemp -d)
SERVER_PID=""
CONTAINERS=()
failed=0

cleanup() {
  for c in "${CONTAINERS[@]}"; do "${B[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ok() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failed=1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# until SECONDS CMD...: run CMD every 0.2 s until it succeeds; 1 if SECONDS pass first.
until_ok() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
http_status() {  # http_status URL -> prints the status code (000 when nothing answers)
  curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" || true
}
status_is() { [ "$(http_status "$2")" = "$1" ]; }

# --- the builder -------------------------------------------------------------------------------
if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
  B=(docker)
  BUILD=(docker build --network host)
  RUN=(docker run --network host)
elif command -v podman >/dev/null; then
  # vfs storage and chroot build isolation work in a VM without overlayfs or nested cgroups;
  # runc (when installed) copes with hybrid cgroups where crun does not; the ulimits stay under
  # what an unprivileged VM lets a container raise. --format docker keeps the HEALTHCHECK.
  B=(podman --storage-driver "${PODMAN_STORAGE:-vfs}")
  if command -v runc >/dev/null; then B+=(--runtime runc); fi
  BUILD=("${B[@]}" build --format docker --isolation chroot --network host)
  RUN=("${B[@]}" run --network host --ulimit nofile=4096:4096 --ulimit nproc=1024:1024)
  if ! timeout 60 "${B[@]}" info >/dev/null 2>&1; then
    echo "podman is installed but does not work here"; exit 77
  fi
else
  echo "no builder: neither a docker daemon nor podman"; exit 77
fi
echo "builder: ${B[*]}"

# --- the base ----------------------------------------------------------------------------------
if [ -z "${BASE:-}" ]; then
  if timeout 60 "${B[@]}" pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE=python:3.11-slim-bookworm
  else
    BASE=localhost/stageprobe-base:bookworm
    if ! "${B[@]}" image inspect "$BASE" >/dev/null 2>&1; then
      command -v mmdebstrap >/dev/null || { echo "no registry and no mmdebstrap for a base"; exit 77; }
      t0=$(now)
      mmdebstrap --quiet --variant=apt --format=tar \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$WORK/base.tar"
      "${B[@]}" import -q "$WORK/base.tar" "$BASE" >/dev/null
      rm -f "$WORK/base.tar"
      echo "base: made $BASE with mmdebstrap in $(since "$t0") s"
    fi
  fi
fi
echo "base: $BASE"

# --- a wheelhouse on loopback, then the build --------------------------------------------------
if ! python3 -m pip download -q --no-deps --only-binary=:all: -r constraints.txt \
    -d "$WORK/wheels" >"$WORK/download.log" 2>&1; then
  cat "$WORK/download.log"; echo "cannot download the wheels of constraints.txt"; exit 1
fi
WHEEL_PORT=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/wheels" "$WHEEL_PORT" \
  >/dev/null 2>&1 &
SERVER_PID=$!
until_ok 10 curl -sf "http://127.0.0.1:$WHEEL_PORT/" || { echo "wheelhouse did not start"; exit 1; }

t0=$(now)
if "${BUILD[@]}" -q -t "$TAG" --build-arg "BASE=$BASE" --build-arg PIP_NO_INDEX=1 \
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/" . >"$WORK/build.log" 2>&1; then
  ok "build: $(since "$t0") s"
else
  tail -30 "$WORK/build.log"; fail "build"; exit 1
fi
kill "$SERVER_PID"; SERVER_PID=""

size=$("${B[@]}" image inspect --format '{{.Size}}' "$TAG")
size_mb=$(( size / 1024 / 1024 ))
if [ "$size_mb" -le "$MAX_SIZE_MB" ]; then ok "image size: $size_mb MB (limit $MAX_SIZE_MB)"
else fail "image size: $size_mb MB > $MAX_SIZE_MB"; fi

user=$("${B[@]}" image inspect --format '{{.Config.User}}' "$TAG")
if [ "$user" = "10001:10001" ]; then ok "image user: $user"; else fail "image user: '$user'"; fi
health=$("${B[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$TAG" 2>/dev/null || true)
case "$health" in *livez*) ok "HEALTHCHECK kept in the image config";;
  *) fail "HEALTHCHECK missing from the image config ($health)";; esac

# Start times are from `run -d` returning (the container exists; with vfs storage creating it
# copies the image, which is the builder's time, not ours) to the first answer.
start() {  # start PORT RUN-ARGS...: run a container with PORT set; sets CID and T0
  local t
  t=$(now)
  CID=$("${RUN[@]}" -d -e "PORT=$1" "${@:2}" 2>>"$WORK/run.log")
  CONTAINERS+=("$CID")
  echo "      (run -d took $(since "$t") s)"
  T0=$(now)
}
answers() {  # answers WHAT URL SECONDS: ok when URL turns 200 within SECONDS of T0
  if until_ok "$3" status_is 200 "$2"; then ok "$1: 200 after $(since "$T0") s"
  else fail "$1: never 200 ($(http_status "$2"))"; "${B[@]}" logs "$CID" 2>&1 | tail -20; fi
}

# --- `probe demo` with PORT: reachable, /readyz turns 200 ----------------------------------------
DEMO_PORT=$(free_port)
start "$DEMO_PORT" "$TAG" demo
answers "demo on PORT=$DEMO_PORT (0.0.0.0 via PROBE_DEMO_HOST), /livez" \
  "http://127.0.0.1:$DEMO_PORT/livez" 30
answers "demo /readyz (the twin boots 'starting' for 4 s)" "http://127.0.0.1:$DEMO_PORT/readyz" 60

# --- `probe run` with a mounted config ---------------------------------------------------------
RUN_PORT=$(free_port)
mkdir -p "$WORK/config"
cat >"$WORK/config/config.yaml" <<EOF
targets:
  - {name: demo-livez, url: "http://127.0.0.1:$DEMO_PORT/livez", interval: 1s, timeout: 1s}
EOF
chmod -R a+rX "$WORK"
start "$RUN_PORT" -e PROBE_GATE_TOKEN=image-test-token -v "$WORK/config:/etc/stageprobe:ro" "$TAG"
daemon=$CID
answers "probe run on PORT=$RUN_PORT, /livez" "http://127.0.0.1:$RUN_PORT/livez" 30
answers "probe run /readyz" "http://127.0.0.1:$RUN_PORT/readyz" 30

ids=$("${B[@]}" exec "$daemon" python -c 'import os; print(os.getuid(), os.getgid())')
if [ "$ids" = "10001 10001" ]; then ok "runs as uid/gid $ids"; else fail "runs as '$ids'"; fi

tools=$("${B[@]}" exec "$daemon" python -c \
  'import importlib.util as u; print(" ".join(m for m in ("pip", "setuptools", "wheel") if u.find_spec(m)) or "none")')
if [ "$tools" = "none" ]; then ok "no pip, setuptools or wheel importable"
else fail "packaging tools left in the image: $tools"; fi

if [ "${B[0]}" = "docker" ]; then
  # Docker runs the HEALTHCHECK on its own schedule (30 s): ask for its verdict via a shorter
  # interval on a twin container instead of waiting.
  start "$(free_port)" --health-interval 1s -v "$WORK/config:/etc/stageprobe:ro" "$TAG"
  if until_ok 40 sh -c "[ \"\$(docker inspect --format '{{.State.Health.Status}}' $CID)\" = healthy ]"
  then ok "HEALTHCHECK: healthy"; else fail "HEALTHCHECK never healthy"; fi
else
  if until_ok 20 "${B[@]}" healthcheck run "$daemon"; then ok "HEALTHCHECK: healthy"
  else fail "HEALTHCHECK failed"; fi
fi

# --- reload without a shell: `probe reload` exec'd directly (no sh, no kill) -----------------
if "${B[@]}" exec "$daemon" kill -HUP 1 >/dev/null 2>&1; then
  echo "note  'kill' exists in this image (the base has procps)"
else
  ok "no 'kill' in the image: \`exec ... kill -HUP 1\` cannot work, \`probe reload\` must"
fi
cat >>"$WORK/config/config.yaml" <<EOF
  - {name: demo-readyz, url: "http://127.0.0.1:$DEMO_PORT/readyz", interval: 1s, timeout: 1s}
EOF
if out=$("${B[@]}" exec "$daemon" probe reload 2>&1) && [ "$out" = "reloaded: 2 target(s)" ]; then
  ok "probe reload (exec, no shell): $out"
else
  fail "probe reload: $out"
fi

# --- SIGTERM ---------------------------------------------------------------------------------
t0=$(now)
"${B[@]}" kill --signal TERM "$daemon" >/dev/null
code=$("${B[@]}" wait "$daemon")
took=$(since "$t0")
if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 5 else 1)" "$took" \
    && [ "$code" = "0" ]; then
  ok "SIGTERM: exited $code in $took s"
else
  fail "SIGTERM: exited $code in $took s (want 0 within 5 s)"
fi

if [ "$failed" = 0 ]; then echo "image test: every check passed"; else echo "image test: FAILED"; fi
exit "$failed"
