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
node_tests=(databases e2e node nodes notify plugin protection recovery streaming verify)
loopback_tests=(chart controller crd encryption faults overlap pipeline races reliability store_security testbed)
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  case " ${node_tests[*]} ${loopback_tests[*]} " in *" $t "*) ;; *)
    echo "tests/run.sh: put tests/$t.rs in node_tests or loopback_tests" >&2; exit 1 ;;
  esac
done
tests_args() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
# shellcheck source-path=SCRIPTDIR source=testenv/k8s-versions.sh
. tests/testenv/k8s-versions.sh
# Against the oldest Kubernetes the chart claims, after the rest: the CRDs'
# admission (every CEL rule, every bad input), every field the operator sends
# kept, and on the node a backup with its chained upload, a drill and a restore.
oldest() {
  local out rc=0
  out=$(DBBACKUP_K8S_VERSION=$OLDEST_K8S_VERSION cargo test --locked --test "$1" -- --exact "$2" 2>&1) || rc=$?
  printf '== %s %s against Kubernetes %s\n%s\n' "$1" "$2" "$OLDEST_K8S_VERSION" "$out"
  # A renamed test would pass as "0 passed": each named one must have run.
  [ "$rc" = 0 ] && grep -q "^test $2 \.\.\. ok$" <<<"$out"
}
# shellcheck disable=SC2046 # one word per argument
loopback_lane() {
  cargo test --locked --lib --bins --examples --benches $(tests_args "${loopback_tests[@]}") &&
    oldest testbed apiserver_reports_its_version_and_serves_namespaces &&
    oldest controller admission_rejects_bad_input_and_names_the_field &&
    oldest controller restore_admission_rejects_bad_input_and_names_the_field &&
    oldest controller the_apiserver_keeps_every_field_the_operator_sends
}
# shellcheck disable=SC2046
node_lane() {
  cargo test --locked $(tests_args "${node_tests[@]}") &&
    oldest e2e backup_chained_upload_drill_and_restore_postgres
}
lane_log=$(mktemp)
DBBACKUP_TEST_PORTS=10000-20999 nice -n 10 bash -c "$(declare -f tests_args oldest loopback_lane); $(declare -p loopback_tests OLDEST_K8S_VERSION); loopback_lane" >"$lane_log" 2>&1 &
lane=$!
node_rc=0
DBBACKUP_TEST_PORTS=21000-31999 node_lane || node_rc=$?
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
# What the real nodes add to the host (tests/support/host.rs, node_net.rs):
# the bridge and veths, network namespaces, cgroups, iptables chains and
# rule, mounts, directories and saved sysctls.
for link in /sys/class/net/dbb0 /sys/class/net/dbbv-* /run/netns/dbbackup-node*; do
  [ ! -e "$link" ] || left+=("$link")
done
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
