#!/usr/bin/env python3
"""Packs one root filesystem tar into an OCI image archive that
`ctr images import` reads, with no registry and no Docker.

usage: oci.py ROOTFS.tar OUT.tar NAME [--user U] [--entrypoint JSON]
              [--cmd JSON] [--env K=V]... [--workdir DIR]
"""
import argparse, hashlib, io, json, os, tarfile

p = argparse.ArgumentParser()
p.add_argument("rootfs")
p.add_argument("out")
p.add_argument("name", help="the image reference, e.g. dbbackup.local/pause:1")
p.add_argument("--user", default="")
p.add_argument("--entrypoint", type=json.loads, default=None)
p.add_argument("--cmd", type=json.loads, default=None)
p.add_argument("--env", action="append", default=[])
p.add_argument("--workdir", default="/")
a = p.parse_args()


def digest_of_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


layer_digest = digest_of_file(a.rootfs)
layer_size = os.path.getsize(a.rootfs)
config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        k: v
        for k, v in {
            "User": a.user,
            "Env": a.env,
            "Entrypoint": a.entrypoint,
            "Cmd": a.cmd,
            "WorkingDir": a.workdir,
        }.items()
        if v
    },
    # An uncompressed layer's diff ID is its own digest.
    "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
}
config_bytes = json.dumps(config, sort_keys=True).encode()
config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": len(config_bytes),
    },
    "layers": [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }
    ],
}
manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
index = {
    "schemaVersion": 2,
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {
                "io.containerd.image.name": a.name,
                "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1],
            },
        }
    ],
}


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


tmp = a.out + ".tmp"
with tarfile.open(tmp, "w") as tar:
    add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add_bytes(tar, "index.json", json.dumps(index).encode())
    add_bytes(tar, "blobs/sha256/" + config_digest[7:], config_bytes)
    add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest_bytes)
    tar.add(a.rootfs, arcname="blobs/sha256/" + layer_digest[7:])
os.replace(tmp, a.out)
