# shellcheck shell=bash disable=SC2034 # read by the scripts that source it
# The Kubernetes versions of the test bed, read by install.sh and tests/run.sh.
# The default: every test runs against it.
K8S_VERSION=v1.37.2
# The oldest minor version the chart claims (charts/dbbackup-operator/Chart.yaml
# kubeVersion), at its newest patch: tests/run.sh runs a subset against it.
OLDEST_K8S_VERSION=v1.30.14
