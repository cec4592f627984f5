#!/usr/bin/env bash
# Build the compose deployment's images where no image registry is reachable,
# from Debian's packages and a wheelhouse made on this machine. The images are
# those of docker-compose.yml, built from the same Dockerfiles: only their
# base (BASE_IMAGE) and where pip installs from (PIP_SOURCE) differ, set by
# docker-compose.offline.yml.
#
#   bash docker/offline-build.sh          (as root, or a user in the docker group
#                                          who may run debootstrap with sudo)
#
# 1. fedforget/debian-rootfs:bookworm: `debootstrap --variant=minbase bookworm`
#    with python3 and python3-venv, imported with `docker import` (skipped when
#    the image exists).
# 2. fedforget/python-base:bookworm: docker/base/Dockerfile (Python 3.11 laid
#    out as Flower's images are: /python/venv, user `app`, uid 49999).
# 3. The wheelhouse (docker/wheelhouse, or $FEDFORGET_WHEELHOUSE): `pip wheel`
#    of fedforget's dependencies and CPU PyTorch, with this machine's pip
#    ($PYTHON, default python3) and its package index.
# 4. The images: `docker-compose build` with docker-compose.offline.yml; pip in
#    each build reads the wheelhouse from a local HTTP server on
#    127.0.0.1:$FEDFORGET_WHEELS_PORT (default 8765), which the builds reach
#    through the host's network (`network: host`). No build reaches anything else.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROOTFS_IMAGE=fedforget/debian-rootfs:bookworm
BASE_IMAGE=fedforget/python-base:bookworm
WHEELHOUSE=${FEDFORGET_WHEELHOUSE:-docker/wheelhouse}
export FEDFORGET_WHEELS_PORT=${FEDFORGET_WHEELS_PORT:-8765}

if ! docker image inspect "$ROOTFS_IMAGE" > /dev/null 2>&1; then
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" > /dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$ROOTFS_IMAGE" > /dev/null
    rm -rf "$rootfs"
fi
docker build -q -t "$BASE_IMAGE" --build-arg ROOTFS="$ROOTFS_IMAGE" docker/base > /dev/null

mkdir -p "$WHEELHOUSE"
"$PYTHON" -m pip wheel -q --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" \
    "torch==2.13.0" "torchvision==0.28.0" "setuptools>=77" wheel .
rm -f "$WHEELHOUSE"/fedforget-*.whl  # the images install the source they are built from

"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$FEDFORGET_WHEELS_PORT" \
    > /dev/null 2>&1 &
server=$!
trap 'kill "$server"' EXIT
docker-compose -f docker-compose.yml -f docker-compose.offline.yml build
