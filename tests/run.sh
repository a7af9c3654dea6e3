#!/usr/bin/env bash
# Sets up and runs every check and test: installs the test bed (idempotent,
# cached), then formatting, lints, the generated CRD, unit and integration
# tests against real servers. Fails if any server outlives the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${DBBACKUP_CACHE:-$HOME/.cache/dbbackup-operator}
bash tests/testenv/install.sh
export DBBACKUP_TESTENV_BIN=$CACHE/bin
# Compiled dependencies are cached beside the tools, so a fresh clone builds in minutes.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

# Process names as the kernel keeps them (15 characters: kube-controller-manager is cut).
servers=(etcd kube-apiserver kube-controller minio postgres mariadbd)
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

echo "== no test server left running"
left=()
for pid in $(server_pids); do
  case "$before" in *" $pid "*) ;; *) left+=("$pid $(cat /proc/"$pid"/comm 2>/dev/null)") ;; esac
done
if [ ${#left[@]} -gt 0 ]; then
  printf 'test servers still running after the suite:\n' >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "all tests passed; no test server left running"
