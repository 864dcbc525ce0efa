#!/usr/bin/env bash
# Builds the example image — Debian's busybox-static as an OCI image layout — without a
# registry or network, so the quickstart works offline. Usage: example-image.sh OUT_DIR
# Writes OUT_DIR/{oci-layout,index.json,blobs/sha256/*}; the image is named
# tug.local/busybox-httpd:1 in index.json. Deterministic: the same busybox gives the same digests.
set -euo pipefail
out=${1:?usage: example-image.sh OUT_DIR}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "example-image: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,www}
cp "$busybox" "$root/bin/busybox"
for applet in sh ash cat echo ls ps sleep true false wget httpd nc id hostname env mkdir rm \
    cp mv date uname grep sed head tail tee touch stat kill ping nslookup vi tar test tty stty; do
    ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"
printf '<h1>Hello from Tug</h1>\n' > "$root/www/index.html"
chmod 1777 "$root/tmp"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"

mkdir -p "$out/blobs/sha256"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
put() { local h; h=$(sha "$1"); cp "$1" "$out/blobs/sha256/$h"; echo "$h"; }

diff_id=$(sha "$work/layer.tar")
layer=$(put "$work/layer.tar.gz")
layer_size=$(size "$work/layer.tar.gz")
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)

printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/httpd","-f","-p","8080","-h","/www"],"WorkingDir":"/","ExposedPorts":{"8080/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$diff_id" > "$work/config.json"
config=$(put "$work/config.json")
config_size=$(size "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
manifest=$(put "$work/manifest.json")
manifest_size=$(size "$work/manifest.json")

printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"tug.local/busybox-httpd:1"}}]}' \
    "$manifest" "$manifest_size" > "$out/index.json"
echo "example-image: $out (tug.local/busybox-httpd:1, sha256:$manifest)"
