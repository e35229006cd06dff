#!/usr/bin/env bash
# Build one image per service (services/<svc>/Dockerfile) from the repository root.
#   docker/build-images.sh [TAG]     (default tag: the short git commit, else "dev")
# Image names match the Helm chart's stages.<stage>.image.repository (cp-<svc with dashes>).
# Skipped with a message (exit 0) when docker or its daemon is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}"
REGISTRY="${CP_IMAGE_REGISTRY:-}"
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "images: docker (or its daemon) is not available; skipping image builds"
    exit 0
fi
for dockerfile in services/*/Dockerfile; do
    svc="$(basename "$(dirname "$dockerfile")")"
    image="cp-${svc//_/-}:${TAG}"
    [ -n "$REGISTRY" ] && image="${REGISTRY%/}/${image}"
    echo "images: building ${image}"
    docker build --quiet -f "$dockerfile" -t "$image" .
done
