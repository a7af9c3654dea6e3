#!/usr/bin/env bash
# Sets up and runs every check and test: installs the test bed (idempotent,
# cached), then formatting, lints, the generated CRD, unit and integration
# tests against real servers and a real node. Fails if any server, node
# process or container, or anything the node adds to the host, outlives the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${DBBACKUP_CACHE:-$HOME/.cache/dbbackup-operator}
bash tests/testenv/install.sh
export DBBACKUP_TESTENV_BIN=$CACHE/bin
# Compiled dependencies are cached beside the tools, so a fresh clone builds in minutes.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

# Process names as the kernel keeps them (15 characters: kube-controller-manager is cut).
servers=(etcd kube-apiserver kube-controller minio weed versitygw postgres mariadbd
  containerd containerd-shim kubelet kube-scheduler kube-proxy coredns pause)
server_pids() { for s in "${servers[@]}"; do pgrep -x "$s" || true; done; }
before=" $(server_pids | tr '\n' ' ') "

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build --release (the memory test measures the shipped binary)"
cargo build --release --locked --bin dbbackup-operator
echo "== cargo test"
cargo test --all-targets --locked

echo "== nothing left running or changed on the host"
left=()
for pid in $(server_pids); do
  case "$before" in *" $pid "*) ;; *) left+=("$pid $(cat /proc/"$pid"/comm 2>/dev/null)") ;; esac
done
# What the real node adds to the host (tests/support/host.rs): its bridge,
# cgroups, iptables chains and rule, mounts, directories and saved sysctls.
[ ! -e /sys/class/net/dbb0 ] || left+=("bridge dbb0")
for cg in /sys/fs/cgroup/*/dbbackup-node; do [ ! -e "$cg" ] || left+=("cgroup $cg"); done
for save in iptables-save ip6tables-save; do
  while read -r rule; do left+=("$save: $rule"); done < <("$save" 2>/dev/null | grep -E 'KUBE-|dbbackup-node' || true)
done
while read -r mount; do left+=("mount $mount"); done < <(grep dbbackup-node /proc/self/mountinfo || true)
for d in "${TMPDIR:-/tmp}"/dbbackup-node-* /run/lock/dbbackup-node.sysctls; do [ ! -e "$d" ] || left+=("$d"); done
if [ ${#left[@]} -gt 0 ]; then
  printf 'left behind after the suite:\n' >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "all tests passed; no test server, node process, container or host change left"
