#!/usr/bin/env bash
# Try dbbackup-operator on a local kind cluster: MinIO, a MariaDB with sample
# data, the operator from this checkout (image built locally), one backup run
# now, and the object key it produced. Needs docker, kind, kubectl and helm.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=dbbackup
image=dbbackup-operator:dev
ns=dbbackup-demo

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-demo needs $tool on PATH" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --config kind-config.yaml
fi
kubectl config use-context "kind-$cluster"

docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

helm upgrade --install dbbackup-operator charts/dbbackup-operator \
  --namespace dbbackup-system --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image#*:}" \
  --set image.pullPolicy=Never --wait

kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f examples/minio.yaml -f examples/mariadb.yaml
kubectl -n "$ns" rollout status deploy/minio deploy/mariadb --timeout=300s
kubectl -n "$ns" apply -f examples/mariadb-minio-backup.yaml
kubectl -n "$ns" wait dbb/shop --for=condition=Ready --timeout=120s

echo "Backing up now..."
kubectl -n "$ns" annotate dbb/shop dbbackup.io/run-now="$(date +%s)" --overwrite
for _ in $(seq 1 60); do
  key=$(kubectl -n "$ns" get dbb/shop -o jsonpath='{.status.lastUploadKey}')
  [ -n "$key" ] && break
  sleep 5
done
[ -n "${key:-}" ] || { echo "no upload within 5 minutes; see: kubectl -n $ns describe dbb shop" >&2; exit 1; }

echo "Uploaded s3://backups/$key"
kubectl -n "$ns" get dbb
kubectl -n "$ns" get dbb/shop -o jsonpath='{range .status.log[*]}{@}{"\n"}{end}'
