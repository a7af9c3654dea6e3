#!/usr/bin/env bash
# Builds the test bed's container images from Debian packages, with no Docker
# and no registry, as OCI archives that the real node imports into containerd:
#
#   build.sh base            pause, mariadb and postgresql images
#   build.sh operator BINARY the operator image, from the release binary
#
# Each archive is cached under $DBBACKUP_CACHE/images by the hash of what it is
# made from (its recipe, the packer, the binary), and linked as
# images/<name>.tar, which the node imports.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${DBBACKUP_CACHE:-$HOME/.cache/dbbackup-operator}
OUT=$CACHE/images
mkdir -p "$OUT"
MIRROR=${DBBACKUP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

# Image references the tests, the demo and the chart values use.
PAUSE_IMAGE=dbbackup.local/pause:1
MARIADB_IMAGE=dbbackup.local/mariadb:10.11
POSTGRES_IMAGE=dbbackup.local/postgres:15
OPERATOR_IMAGE=dbbackup.local/dbbackup-operator:dev

log() { printf '[images] %s\n' "$*" >&2; }
# Bump when a build step below changes what an image holds.
RECIPE=2
recipe_hash() { { echo "$RECIPE $SUITE"; cat "$here/oci.py" "$@"; } | sha256sum | cut -c1-12; }

# publish NAME FILE: the archive becomes images/NAME.tar; older builds of NAME go.
publish() {
  ln -sfn "$(basename "$2")" "$OUT/$1.tar"
  for old in "$OUT/$1"-*.tar; do [ "$old" = "$2" ] || rm -f "$old"; done
  echo "image $1: $2"
}

# debian_image NAME REF USER UID HOME PACKAGES [oci.py flags...]: a minbase
# Debian rootfs with PACKAGES, whose service user is created first with the
# official images' UID and GID, so that the packages' scripts keep it.
debian_image() {
  local name=$1 ref=$2 user=$3 uid=$4 home=$5 packages=$6; shift 6
  local file
  file="$OUT/$name-$(recipe_hash <(printf '%s\n' "$@" "$ref" "$user" "$uid" "$home" "$packages")).tar"
  if [ ! -s "$file" ]; then
    log "building $ref from Debian $SUITE: $packages"
    local tmp; tmp=$(mktemp -d "$OUT/.build-XXXXXX")
    # shellcheck disable=SC2016 # mmdebstrap expands $1, the root, in its hooks
    mmdebstrap --quiet --variant=minbase --skip=output/dev \
      --aptopt='APT::Install-Recommends "false"' \
      --essential-hook="echo '$user:x:$uid:$uid::$home:/bin/sh' >>\"\$1/etc/passwd\"; echo '$user:x:$uid:' >>\"\$1/etc/group\"" \
      --include="$packages" \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main "$1"/var/lib/mysql/*' \
      "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
    python3 "$here/oci.py" "$tmp/rootfs.tar" "$file" "$ref" "$@"
    rm -rf "$tmp"
  fi
  publish "$name" "$file"
}

base() {
  local pause
  pause="$OUT/pause-$(recipe_hash "$here/pause.c").tar"
  if [ ! -s "$pause" ]; then
    log "building $PAUSE_IMAGE"
    local tmp; tmp=$(mktemp -d "$OUT/.build-XXXXXX")
    mkdir -p "$tmp/root"
    gcc -static -O2 -s -o "$tmp/root/pause" "$here/pause.c"
    tar -C "$tmp/root" --owner=0 --group=0 --numeric-owner -cf "$tmp/rootfs.tar" pause
    python3 "$here/oci.py" "$tmp/rootfs.tar" "$pause" "$PAUSE_IMAGE" --entrypoint '["/pause"]'
    rm -rf "$tmp"
  fi
  publish pause "$pause"

  # The server, dump and client tools of the official images, with their
  # user mysql 999:999 (the server for restore drills; its data directory empty).
  debian_image mariadb "$MARIADB_IMAGE" mysql 999 /var/lib/mysql \
    mariadb-server,mariadb-client,zstd,mawk,tzdata \
    --cmd '["mariadb"]'
  # The server, dump and client tools of the official images, with their user
  # postgres 999:999 and the versioned bin directory first on PATH (no cluster).
  debian_image postgres "$POSTGRES_IMAGE" postgres 999 /var/lib/postgresql \
    postgresql-15,postgresql-client-15,zstd,mawk,tzdata \
    --env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["psql"]'
}

# The release binary with the shared libraries it loads, its users and CA
# certificates: what distroless/static-debian12 gives the musl build.
operator() {
  local binary=$1
  [ -x "$binary" ] || { echo "no operator binary at $binary: build it with cargo build --release" >&2; exit 1; }
  local file
  file="$OUT/operator-$(recipe_hash "$binary").tar"
  if [ ! -s "$file" ]; then
    log "building $OPERATOR_IMAGE from $binary"
    local tmp; tmp=$(mktemp -d "$OUT/.build-XXXXXX")
    local root=$tmp/root
    mkdir -p "$root/etc/ssl/certs" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$binary" "$root/dbbackup-operator"
    # The loader and every library the binary links, at their own paths.
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    tar -C "$root" --owner=0 --group=0 --numeric-owner -cf "$tmp/rootfs.tar" .
    python3 "$here/oci.py" "$tmp/rootfs.tar" "$file" "$OPERATOR_IMAGE" \
      --user 65532:65532 --entrypoint '["/dbbackup-operator"]' --cmd '["run"]'
    rm -rf "$tmp"
  fi
  publish operator "$file"
}

case "${1:-}" in
  base) base ;;
  operator) operator "${2:?usage: build.sh operator BINARY}" ;;
  *) echo "usage: build.sh base | operator BINARY" >&2; exit 2 ;;
esac
