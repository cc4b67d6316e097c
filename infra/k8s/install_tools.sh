#!/usr/bin/env bash
# Install the pinned Helm binary used by the offline chart validation into .qustream/tools/bin.
#
# Helm is built from source through the Go module proxy (no GitHub release download, which the
# build machines cannot reach). The build is skipped when the pinned version is already there.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${QUSTREAM_TOOLS_BIN:-$ROOT/.qustream/tools/bin}"
STAMP="$BIN_DIR/.helm-$HELM_VERSION"

if [[ -x "$BIN_DIR/helm" && -f "$STAMP" ]]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go >= 1.24 is required to build helm $HELM_VERSION" >&2; exit 1; }

mkdir -p "$BIN_DIR"
echo "building helm $HELM_VERSION into $BIN_DIR (first run only; a few minutes)" >&2
start=$(date +%s)
# -trimpath keeps the binary reproducible; nice keeps a shared CI machine responsive.
GOBIN="$BIN_DIR" GOFLAGS="-trimpath" nice -n 10 go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
rm -f "$BIN_DIR"/.helm-*
touch "$STAMP"
echo "helm $HELM_VERSION built in $(( $(date +%s) - start ))s" >&2
