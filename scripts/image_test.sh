#!/usr/bin/env bash
# `make image-test`: build the CPU image from this checkout with a real engine and test the running container
# as an operator would (tests/test_image_cpu.py; docs/deploy.md says what it proves). From nothing, on a
# Debian machine, as root:
#
#   1. Debian's docker.io, buildah, debootstrap and docker-compose (installed only when missing);
#   2. dockerd, started in the background unless one already answers, and stopped again at the end;
#   3. a base image: without registry access, a stand-in for python:3.11-slim made with debootstrap (Debian
#      bookworm's Python 3.11 in a venv at /usr/local, where the official image keeps its Python), reused when
#      it exists; IMAGE_TEST_BASE=python:3.11-slim uses (and pulls) the real one instead;
#   4. buildah builds the project's own Dockerfile (Debian's docker.io has no BuildKit for `RUN --mount`),
#      with --format docker so that HEALTHCHECK survives, and pushes it into dockerd;
#   5. pytest -m docker on tests/test_image_cpu.py, against the image, bounded in time.
#
#   scripts/image_test.sh                 # everything
#   scripts/image_test.sh -k compose      # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE_TEST_IMAGE:-resnet-serve:cpu}"
standin="localhost/python-standin:3.11-slim-bookworm"
base="${IMAGE_TEST_BASE:-$standin}"
py="${PYTHON:-.venv/bin/python}"
work="${IMAGE_TEST_WORK:-/var/tmp/resnet-serve-image-test}"
mkdir -p "$work"
started=$(date +%s)
say() { printf '==> [%4ds] %s\n' "$(($(date +%s) - started))" "$*"; }

if [[ $EUID -ne 0 ]] && ! docker info >/dev/null 2>&1; then
  echo "image-test: run it as root (it installs Debian packages, starts dockerd and builds with buildah)" >&2
  exit 2
fi

# --- 1. packages -----------------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. the daemon ---------------------------------------------------------------------------------------
dockerd_pid=""
cleanup() {
  local rc=$?
  # Containers and compose projects the tests started carry this label; remove any a failure left behind.
  local left
  left=$( (docker ps -aq --filter label=resnet-serve-image-test
           docker ps -aq --filter label=com.docker.compose.project=resnet-serve-image-test) 2>/dev/null || true)
  if [[ -n "$left" ]]; then
    # shellcheck disable=SC2086
    docker rm -f $left >/dev/null 2>&1 || true
  fi
  if [[ -n "$dockerd_pid" ]]; then
    say "stopping the dockerd this run started (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  say "image test finished with status $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if docker info >/dev/null 2>&1; then
  say "reusing the Docker daemon that is already running"
else
  say "starting dockerd (log: $work/dockerd.log)"
  dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$work/dockerd.log" >&2; exit 1; }
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not answer within 60 s" >&2; exit 1; }
fi

# --- 3. the base image -----------------------------------------------------------------------------------
if docker image inspect "$base" >/dev/null 2>&1; then
  say "reusing the base image $base"
elif [[ "$base" != "$standin" ]]; then
  say "pulling the base image $base"
  docker pull "$base"
else
  say "making $base with debootstrap (no image registry here)"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rootfs="$work/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # The official image's paths: python and pip in /usr/local/bin, packages in /usr/local/lib/python3.11.
  chroot "$rootfs" python3 -m venv /usr/local
  # pip inside a build reaches the package index through this machine's CA bundle (PIP_CERT).
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/build-host-ca.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/build-host-ca.crt' \
    -c 'CMD ["python3"]' - "$base" >/dev/null
  rm -rf "$rootfs"
fi

# --- 4. the build ----------------------------------------------------------------------------------------
buildah pull --quiet "docker-daemon:$base" >/dev/null
say "building $image from ./Dockerfile with buildah (BASE_IMAGE=$base)"
build_start=$(date +%s)
# The file as it is: buildah parses it itself and ignores the `# syntax=` line (a BuildKit frontend to pull).
buildah bud --network host --isolation chroot --pull=never --format docker \
  --build-arg "BASE_IMAGE=$base" -f Dockerfile -t "$image" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
buildah push --quiet "$image" "docker-daemon:$image" >/dev/null
buildah rmi "$image" >/dev/null 2>&1 || true
build_s=$(($(date +%s) - build_start))
size=$(docker image inspect --format '{{.Size}}' "$image")
say "built $image in ${build_s} s: $((size / 1000000)) MB"

# --- 5. the operator's checks ----------------------------------------------------------------------------
say "testing the running container (tests/test_image_cpu.py)"
rm -f "$work/report.txt"
echo "build: ${build_s} s, $((size / 1000000)) MB" >"$work/report.txt"
IMAGE_TEST_IMAGE="$image" IMAGE_TEST_BASE="$base" IMAGE_TEST_WORK="$work" \
  timeout --kill-after=30 1500 "$py" -m pytest tests/test_image_cpu.py --docker -p no:cacheprovider -q "$@"
say "what the checks measured:"
sed 's/^/    /' "$work/report.txt"
