#!/usr/bin/env bash
# Try dbbackup-operator on this machine, without Docker: a single-node cluster
# (the test bed's real kubelet, containerd and control plane; NODES=2 for two
# nodes, each in a network namespace of its own), the chart
# installed with the locally built image, MinIO and a MariaDB with sample
# data, one backup run now, and a restore of it into a new database whose row
# counts are compared with the source. Needs Linux, root, and the packages and
# Go modules tests/testenv/install.sh installs. `make demo-down` removes it all.
#
#   scripts/demo.sh        bring it up and run the demo (NODES=2: two nodes)
#   scripts/demo.sh down   remove the cluster and everything it added
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${DBBACKUP_CACHE:-$HOME/.cache/dbbackup-operator}
STATE=$CACHE/demo
NS=dbbackup-demo
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export DBBACKUP_TESTENV_BIN=$CACHE/bin

down() {
  if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
    pid=$(cat "$STATE/pid")
    echo "stopping the demo cluster (pid $pid)"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
    tail -n 2 "$STATE/cluster.log"
  else
    echo "no demo cluster is running; removing what one may have left"
    cargo build -q --locked --example demo-cluster
    "$CARGO_TARGET_DIR/debug/examples/demo-cluster" down
  fi
  rm -rf "$STATE"
}

if [ "${1:-}" = down ]; then down; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "the demo runs a kubelet and containerd: run it as root" >&2; exit 1; }
if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
  echo "a demo cluster is already up; run 'make demo-down' first" >&2
  exit 1
fi

echo "== installing the tools and images (cached after the first run)"
bash tests/testenv/install.sh >/dev/null
echo "== building the operator and the demo cluster"
cargo build --release --locked --bin dbbackup-operator
cargo build --locked --example demo-cluster
bash tests/testenv/images/build.sh operator "$CARGO_TARGET_DIR/release/dbbackup-operator"

echo "== starting the cluster (${NODES:-1} node(s))"
mkdir -p "$STATE"
setsid nohup "$CARGO_TARGET_DIR/debug/examples/demo-cluster" "$STATE" "$NS" >"$STATE/cluster.log" 2>&1 &
echo $! >"$STATE/pid"
for _ in $(seq 1 300); do
  [ -f "$STATE/ready" ] && break
  kill -0 "$(cat "$STATE/pid")" 2>/dev/null || { cat "$STATE/cluster.log" >&2; exit 1; }
  sleep 1
done
[ -f "$STATE/ready" ] || { echo "the cluster did not come up; see $STATE/cluster.log" >&2; exit 1; }
export KUBECONFIG=$STATE/kubeconfig
PATH=$DBBACKUP_TESTENV_BIN:$PATH
kubectl get nodes -o wide

echo "== helm install of the operator"
helm install dbbackup-operator charts/dbbackup-operator \
  --namespace dbbackup-system --create-namespace --skip-crds \
  --set image.repository=dbbackup.local/dbbackup-operator --set image.tag=dev \
  --set logFormat=text --wait --timeout 3m
kubectl -n dbbackup-system get pods

# There is no registry here: the database image is the one built from Debian
# packages, set on the example's manifests.
with_local_image() { sed 's|^\(    \)engine: mariadb$|&\n\1image: dbbackup.local/mariadb:10.11|' "$1"; }

echo "== the backup of examples/mariadb-minio-backup.yaml"
with_local_image examples/mariadb-minio-backup.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" wait dbb/shop --for=condition=Ready --timeout=120s

echo "== backing up now"
kubectl -n "$NS" annotate dbb/shop dbbackup.io/run-now="$(date +%s)" --overwrite
key=
for _ in $(seq 1 150); do
  key=$(kubectl -n "$NS" get dbb/shop -o jsonpath='{.status.lastUploadKey}')
  [ -n "$key" ] && break
  sleep 2
done
[ -n "$key" ] || { kubectl -n "$NS" describe dbb shop >&2; exit 1; }
echo "uploaded s3://backups/$key"
kubectl -n "$NS" get dbb
kubectl -n "$NS" get dbb/shop -o jsonpath='{range .status.log[*]}{@}{"\n"}{end}'

echo "== restoring it with examples/restore-latest.yaml into the new database shop_restored"
with_local_image examples/restore-latest.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" wait dbr/shop-restore --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s
kubectl -n "$NS" get dbr

echo "== row counts, through the mariadb Service"
db_host=$(kubectl -n "$NS" get service mariadb -o jsonpath='{.spec.clusterIP}')
count_rows() {
  local sql="" t
  for t in customers addresses products orders order_items payments; do
    sql+="${sql:+ UNION ALL }SELECT '$t', COUNT(*) FROM $t"
  done
  # The Service's address is kube-proxy's: on the host with one node, in
  # each node's own network namespace with several.
  local on_node=()
  [ "${NODES:-1}" = 1 ] || on_node=(ip netns exec dbbackup-node-a)
  MYSQL_PWD=demo-backup-password "${on_node[@]}" mariadb --no-defaults -h "$db_host" -u backup -N -B "$1" -e "$sql"
}
count_rows shop >"$STATE/shop.counts"
count_rows shop_restored >"$STATE/restored.counts"
paste "$STATE/shop.counts" "$STATE/restored.counts" | awk 'BEGIN { printf "%-12s %8s %8s\n", "table", "shop", "restored" } { printf "%-12s %8s %8s\n", $1, $2, $4 }'
if cmp -s "$STATE/shop.counts" "$STATE/restored.counts"; then
  echo "row counts match"
else
  echo "row counts differ" >&2
  exit 1
fi

echo "== where the pods ran (the dump and upload where the staging volume is)"
kubectl -n "$NS" get pods -o wide

echo
echo "The cluster stays up. Use it with:"
echo "  export KUBECONFIG=$KUBECONFIG PATH=$DBBACKUP_TESTENV_BIN:\$PATH"
echo "  kubectl -n $NS get dbb,dbr,cronjobs,jobs,pods"
echo "Remove it with: make demo-down"
