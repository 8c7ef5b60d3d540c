#!/usr/bin/env python3
"""Container images for the local e2e cluster, built from files on this
machine with no base image and no registry (e2e/cluster.sh imports them
with `ctr -n k8s.io images import`).

Each image is one layer, written as a docker-archive tarball (manifest.json,
the config blob, the layer) with every mtime 0, so the same inputs give the
same image ID. Dynamically linked programs bring the shared libraries `ldd`
lists (and the dynamic loader) at the same paths.

    e2e/images.py roster  OUT.tar TAG --bin target/release/roster --bin target/release/roster-agent
    e2e/images.py pause   OUT.tar TAG --pause PATH
    e2e/images.py curl    OUT.tar TAG            # Debian's curl + busybox (sh, date, awk...)
    e2e/images.py coredns OUT.tar TAG --coredns PATH
"""

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The distroless "nonroot" user the chart and Dockerfile assume.
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"


def shared_libs(path):
    """The absolute paths `ldd` resolves for an ELF file ([] if static)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return []
    libs = []
    for line in out.stdout.splitlines():
        if "not found" in line:
            raise SystemExit(f"images: {path}: {line.strip()}")
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    """An in-memory layer tar: directories, files, symlinks; mtime 0, root-owned."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _dirs(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/" + "/".join(parts[:i]))

    def dir(self, path, mode=0o755):
        name = path.strip("/")
        if not name or name in self.seen:
            return
        self._dirs(path)
        self.seen.add(name)
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)

    def data(self, path, content, mode=0o644):
        name = path.strip("/")
        if name in self.seen:
            return
        self._dirs(path)
        self.seen.add(name)
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        self.tar.addfile(info, io.BytesIO(content))

    def file(self, src, dest=None, mode=None):
        """A file, by content (symlinks followed), and what ldd says it needs."""
        dest = dest or src
        real = os.path.realpath(src)
        with open(real, "rb") as f:
            content = f.read()
        self.data(dest, content, mode if mode is not None else (os.stat(real).st_mode & 0o777))
        if content[:4] == b"\x7fELF":
            for lib in shared_libs(real):
                self.file(lib)

    def symlink(self, path, target):
        name = path.strip("/")
        if name in self.seen:
            return
        self._dirs(path)
        self.seen.add(name)
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def base(layer):
    """What distroless gives every image: /etc/passwd with nonroot, /tmp, CA certificates."""
    layer.data("/etc/passwd", PASSWD.encode())
    layer.data("/etc/group", GROUP.encode())
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot", 0o755)
    if os.path.exists(CA_BUNDLE):
        layer.file(CA_BUNDLE, mode=0o644)


def write_archive(out, tag, layer_bytes, config):
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/images.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id[len("sha256:"):] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (
            (config_name, config_bytes),
            (layer_name, layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    os.replace(tmp, out)
    print(f"images: {tag} -> {out} ({len(layer_bytes) // 1024} KiB, image {config_name[:12]})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["roster", "pause", "curl", "coredns"])
    p.add_argument("out")
    p.add_argument("tag")
    p.add_argument("--bin", action="append", default=[], help="roster: binaries for /usr/local/bin")
    p.add_argument("--pause")
    p.add_argument("--coredns")
    a = p.parse_args()

    layer = Layer()
    if a.kind == "roster":
        base(layer)
        for b in a.bin:
            layer.file(b, "/usr/local/bin/" + os.path.basename(b), 0o755)
        config = {"Entrypoint": ["/usr/local/bin/roster"], "Cmd": ["--help"], "Env": [PATH_ENV],
                  "User": "65532:65532", "WorkingDir": "/",
                  "ExposedPorts": {f"{n}/tcp": {} for n in (8000, 8080, 8443, 9090)}}
    elif a.kind == "pause":
        layer.file(a.pause, "/pause", 0o755)
        config = {"Entrypoint": ["/pause"], "User": "65535:65535", "Env": [PATH_ENV], "WorkingDir": "/"}
    elif a.kind == "coredns":
        base(layer)
        layer.file(a.coredns, "/coredns", 0o755)
        config = {"Entrypoint": ["/coredns"], "Env": [PATH_ENV], "WorkingDir": "/",
                  "ExposedPorts": {"53/tcp": {}, "53/udp": {}}}
    else:  # curl: the `helm test` pod and the load generator (sh, date, awk, cat + curl)
        base(layer)
        layer.file("/usr/bin/curl", "/usr/bin/curl", 0o755)
        busybox = "/bin/busybox"
        layer.file(busybox, "/bin/busybox", 0o755)
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet not in ("busybox", "curl"):
                layer.symlink("/bin/" + applet, "busybox")
        config = {"Cmd": ["sh"], "Env": [PATH_ENV], "User": "65532:65532", "WorkingDir": "/"}
    write_archive(a.out, a.tag, layer.bytes(), config)


if __name__ == "__main__":
    sys.exit(main())
