#!/usr/bin/env bash
# Build one image per service from the repository root: each is a target of the one build
# recipe, docker/Dockerfile (target = the service's folder name).
#   docker/build-images.sh [TAG]     (default tag: the short git commit, else "dev")
# Image names match the Helm chart's stages.<stage>.image.repository (cp-<svc with dashes>).
# Engine: docker when its daemon answers, else podman; skipped with a message (exit 0) when
# neither is usable. Production builds use the Dockerfile's default (official) bases; to build
# without a registry, override them (CI does, see tests/images.py):
#   PYTHON_BASE=localhost/debian-py311:bookworm \
#   BEAM_SDK_IMAGE=localhost/cp-test-beam-sdk-standin:2.77.0 docker/build-images.sh ci
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
REGISTRY="${CP_IMAGE_REGISTRY:-}"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
    engine=podman
else
    echo "images: neither docker (with a running daemon) nor podman is available; skipping image builds"
    exit 0
fi
build_args=()
[ -n "${PYTHON_BASE:-}" ] && build_args+=(--build-arg "PYTHON_BASE=${PYTHON_BASE}")
for svc in beam_launcher mirror queries routeviews untar; do
    image="cp-${svc//_/-}:${TAG}"
    [ -n "$REGISTRY" ] && image="${REGISTRY%/}/${image}"
    extra=()
    if [ "$svc" = beam_launcher ] && [ -n "${BEAM_SDK_IMAGE:-}" ]; then
        extra+=(--build-arg "BEAM_SDK_IMAGE=${BEAM_SDK_IMAGE}")
    fi
    echo "images: building ${image} with ${engine}"
    start=$(date +%s)
    "$engine" build --quiet "${build_args[@]}" "${extra[@]}" -f docker/Dockerfile \
        --target "$svc" -t "$image" .
    echo "images: ${image} built in $(( $(date +%s) - start )) s"
done
# The untagged builder stages stay as the layer cache of the next build; free them with
# `podman image prune -f` (or `docker image prune -f`).
