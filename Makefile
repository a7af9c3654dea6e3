.PHONY: test crds testenv demo demo-down kind-demo bench

# Set up the test bed and run every check and test.
test:
	bash tests/run.sh

# Regenerate the CRD from the Rust types (top level and the chart's copy).
crds:
	cargo run -q -- crd databasebackups > crds/databasebackups.yaml
	cargo run -q -- crd databaserestores > crds/databaserestores.yaml
	cargo run -q -- crd databaserestoregrants > crds/databaserestoregrants.yaml
	cp crds/databasebackups.yaml crds/databaserestores.yaml crds/databaserestoregrants.yaml charts/dbbackup-operator/crds/

# Install (or check) the test-bed binaries.
testenv:
	bash tests/testenv/install.sh

# Try it without Docker: a cluster on this machine (root, Linux), of one
# node or NODES (`make demo NODES=2`), the chart, MinIO, a sample MariaDB, a
# backup and a restore. Stays up.
NODES ?= 1
demo:
	NODES=$(NODES) bash scripts/demo.sh

# Remove the demo cluster and everything it added to the host.
demo-down:
	bash scripts/demo.sh down

# Try it on kind with MinIO and a sample MariaDB (needs docker, kind, kubectl, helm).
kind-demo:
	bash scripts/kind-demo.sh

# Upload, dump and operator-scale benchmarks against boto3 and awscli (PyPI);
# writes bench/results.md. Takes about an hour on 2 cores once the test bed is built,
# 45 minutes of it the scale run on the node (BENCH_ONLY=large, BENCH_LARGE_GIB=10).
BENCH_VENV ?= $(HOME)/.cache/dbbackup-operator/bench-venv
bench:
	bash tests/testenv/install.sh
	test -x $(BENCH_VENV)/bin/aws || { python3 -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install -q boto3 awscli; }
	DBBACKUP_TESTENV_BIN=$${DBBACKUP_CACHE:-$(HOME)/.cache/dbbackup-operator}/bin BENCH_PYTHON=$(BENCH_VENV)/bin/python \
	  CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$(HOME)/.cache/dbbackup-operator/target} cargo bench --locked --bench bench
