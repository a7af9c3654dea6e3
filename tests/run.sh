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
cargo test --all-targets --locked --no-run
# Two lanes at once. Only one node runs on a machine (a lock), so the test
# binaries that start one run in turn; the others (loopback servers only)
# run beside them, niced, each lane with ports of its own (free_port).
node_tests=(e2e node notify plugin protection recovery reliability streaming verify)
loopback_tests=(chart controller crd encryption faults overlap pipeline races store_security testbed)
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  case " ${node_tests[*]} ${loopback_tests[*]} " in *" $t "*) ;; *)
    echo "tests/run.sh: put tests/$t.rs in node_tests or loopback_tests" >&2; exit 1 ;;
  esac
done
tests_args() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
lane_log=$(mktemp)
# shellcheck disable=SC2046 # one word per argument
DBBACKUP_TEST_PORTS=10000-20999 nice -n 10 cargo test --locked --lib --bins --examples --benches \
  $(tests_args "${loopback_tests[@]}") > "$lane_log" 2>&1 &
lane=$!
node_rc=0
# shellcheck disable=SC2046
DBBACKUP_TEST_PORTS=21000-31999 cargo test --locked $(tests_args "${node_tests[@]}") || node_rc=$?
lane_rc=0
wait "$lane" || lane_rc=$?
echo "== the loopback lane's output"
cat "$lane_log"
rm -f "$lane_log"
if [ "$node_rc" != 0 ] || [ "$lane_rc" != 0 ]; then
  echo "tests failed: node lane exit $node_rc, loopback lane exit $lane_rc" >&2
  exit 1
fi

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
