#!/usr/bin/env bash
# Builds Qleet's three container images from deploy/images/*.Containerfile:
#   REPO/qleet:TAG                the management plane (qleet, qleet-control-plane, the web UI, pg_dump)
#   REPO/qleet-control-plane:TAG  one tenant's control plane (what the Kubernetes driver runs)
#   REPO/qleet-agent:TAG          the tenant agent (and helm, when HELM_BIN names a static one)
# Each is FROM scratch: static (musl) builds of the Rust binaries, CA certificates and a non-root
# user (65532), so no registry or base image is needed. The script prepares one build context
# per image under target/images/ and runs `podman build` (or docker: QLEET_CONTAINER_RUNTIME).
#
#   scripts/build-images.sh                  # REPO=ghcr.io/qleet, TAG=the workspace version
#   QLEET_IMAGE_REPO=registry.example/qleet QLEET_IMAGE_TAG=1.2.3 scripts/build-images.sh
#   HELM_BIN=/path/to/helm scripts/build-images.sh   # a static helm 3 for the agent's Helm workloads
#
# Other settings: QLEET_IMAGE_PROFILE (cargo profile, default dist: size-optimised, fat LTO),
# QLEET_SITE_DIR (an already built web UI; default: scripts/build-ui.sh --release into target/site-release).
# Prints one line per image on stdout: `NAME SIZE_BYTES`.
source "$(dirname "$0")/lib.sh"

RUNTIME=${QLEET_CONTAINER_RUNTIME:-podman}
REPO=${QLEET_IMAGE_REPO:-ghcr.io/qleet}
VERSION=$(awk -F'"' '/^\[workspace.package\]/ { w = 1 } w && /^version = / { print $2; exit }' Cargo.toml)
TAG=${QLEET_IMAGE_TAG:-$VERSION}
PROFILE=${QLEET_IMAGE_PROFILE:-dist}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT="$TARGET_DIR/images"
command -v "$RUNTIME" >/dev/null || die "$RUNTIME is not installed (apt-get install podman runc, or set QLEET_CONTAINER_RUNTIME=docker)"

ensure_musl_target
say "building qleet, qleet-control-plane and qleet-agent ($MUSL_TARGET, profile $PROFILE)"
cargo build --locked --profile "$PROFILE" --target "$MUSL_TARGET" \
  -p qleet --features qleet/kubernetes -p qleet-control-plane -p qleet-agent >&2
BIN="$TARGET_DIR/$MUSL_TARGET/$PROFILE"
for b in qleet qleet-control-plane qleet-agent; do
  # Static: no program interpreter, so it runs on an image with no C library.
  if readelf -l "$BIN/$b" | grep -q 'Requesting program interpreter'; then
    die "$BIN/$b is dynamically linked"
  fi
done

SITE=${QLEET_SITE_DIR:-}
if [ -z "$SITE" ]; then
  say "building the web UI (release)"
  # A directory of its own, so the development build at target/site stays as it was.
  SITE=$(QLEET_SITE_DIR="$TARGET_DIR/site-release" scripts/build-ui.sh --release | tail -n 1)
fi
[ -f "$SITE/pkg/qleet_bg.wasm" ] || die "no built web UI at $SITE (scripts/build-ui.sh)"

CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || ensure_apt ca-certificates /nonexistent
[ -f "$CA" ] || die "no CA bundle at $CA"

# Files every image has: CA certificates and the runtime user (no shell, no home to write).
common_etc() {
  local etc=$1/etc
  mkdir -p "$etc/ssl/certs"
  cp "$CA" "$etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/:/sbin/nologin\nqleet:x:65532:65532:qleet:/nonexistent:/sbin/nologin\n' >"$etc/passwd"
  printf 'root:x:0:\nqleet:x:65532:\n' >"$etc/group"
}

# The newest pg_dump and the shared libraries it loads, at their own paths (the management plane
# finds it under /usr/lib/postgresql/*/bin).
stage_pg_dump() {
  local dest=$1 pg_dump
  ensure_postgres_binaries
  pg_dump=$(ls -d /usr/lib/postgresql/*/bin/pg_dump 2>/dev/null | sort -V | tail -n 1)
  [ -n "$pg_dump" ] || die "pg_dump not found under /usr/lib/postgresql (apt-get install postgresql-client)"
  mkdir -p "$dest$(dirname "$pg_dump")"
  cp "$pg_dump" "$dest$pg_dump"
  ldd "$pg_dump" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
  done
}

rm -rf "$OUT"
mkdir -p "$OUT"

ctx="$OUT/qleet"
mkdir -p "$ctx/bin" "$ctx/data" "$ctx/pg"
common_etc "$ctx"
cp "$BIN/qleet" "$BIN/qleet-control-plane" "$ctx/bin/"
cp -r "$SITE" "$ctx/site"
stage_pg_dump "$ctx/pg"

ctx="$OUT/qleet-control-plane"
mkdir -p "$ctx/bin"
common_etc "$ctx"
cp "$BIN/qleet-control-plane" "$ctx/bin/"

ctx="$OUT/qleet-agent"
mkdir -p "$ctx/bin" "$ctx/data" "$ctx/helm"
common_etc "$ctx"
cp "$BIN/qleet-agent" "$ctx/bin/"
if [ -n "${HELM_BIN:-}" ]; then
  [ -x "$HELM_BIN" ] || die "HELM_BIN=$HELM_BIN is not an executable"
  readelf -l "$HELM_BIN" | grep -q 'Requesting program interpreter' && die "HELM_BIN=$HELM_BIN is dynamically linked; the image has no C library"
  cp "$HELM_BIN" "$ctx/helm/helm"
else
  say "no HELM_BIN given: the agent image has no helm (Helm workloads will report HelmUnavailable)"
fi

for image in qleet qleet-control-plane qleet-agent; do
  file="deploy/images/${image#qleet-}.Containerfile"
  [ "$image" = qleet ] && file=deploy/images/qleet.Containerfile
  say "$RUNTIME build $REPO/$image:$TAG"
  "$RUNTIME" build --quiet -f "$file" -t "$REPO/$image:$TAG" \
    --label "org.opencontainers.image.version=$TAG" \
    "$OUT/$image" >/dev/null
  printf '%s %s\n' "$REPO/$image:$TAG" "$("$RUNTIME" image inspect --format '{{.Size}}' "$REPO/$image:$TAG")"
done
