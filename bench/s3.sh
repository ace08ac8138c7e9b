#!/usr/bin/env bash
# Image storage in S3 (moto's S3 server on loopback) side by side with the
# local data directory, in one run, for one image: an ext4 holding DATA_MIB
# MiB of incompressible file data, as a QCOW2 holding all of it (so the
# analysis, which reads only QCOW2 tables and filesystem metadata, needs a
# small part of it). For each backend: upload (with completion: hashing
# and, on S3, composing the image object), analysis (completion to ready),
# a whole /raw download; for S3 also the bytes the analysis fetched from
# the bucket, and the server's peak RSS (memory must not grow with the
# image). The anchors: `sha256sum` of the file and `qemu-img convert -O raw`.
#
#   bench/s3.sh [DATA_MIB]        (default 1024; needs python3 -m moto.server)
#
# moto keeps objects in its own memory and is far slower than MinIO or S3:
# read the S3 times as an upper bound, the fetched bytes as exact.
set -euo pipefail
cd "$(dirname "$0")/.."
data_mib=${1:-1024}
out=bench/out/s3
rm -rf "$out" && mkdir -p "$out"

profile=${PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release -q -p support-server --bin support-server --example upload
else
    cargo build -q -p support-server --bin support-server --example upload
fi
tdir=${CARGO_TARGET_DIR:-target}
bin=$tdir/$profile/support-server
client=$tdir/$profile/examples/upload

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# The image.
mkdir -p "$out/src"
for i in $(seq "$data_mib"); do head -c 1048576 /dev/urandom > "$out/src/f$i"; done
fs_mib=$((data_mib * 2 + 256))
mke2fs -q -F -t ext4 -d "$out/src" "$out/fs.img" "${fs_mib}M"
rm -rf "$out/src"
qemu-img convert -O qcow2 "$out/fs.img" "$out/fs.qcow2"
size=$(stat -c %s "$out/fs.qcow2")
cat "$out/fs.qcow2" > /dev/null
t0=$(now); sha256sum "$out/fs.qcow2" > /dev/null; t1=$(now)
sha_s=$(echo "$t1 - $t0" | bc)
t0=$(now); qemu-img convert -O raw "$out/fs.qcow2" "$out/qemu.raw"; sync; t1=$(now)
qemu_s=$(echo "$t1 - $t0" | bc)
rm -f "$out/qemu.raw" "$out/fs.img"

# The S3 server.
mport=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$mport" > "$out/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$mport/" && break; sleep 0.1; done
curl -s -f -X PUT "http://127.0.0.1:$mport/bench" > /dev/null

metric() { curl -s "$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }

run_one() { # BACKEND -> prints "upload_s analysis_s raw_s fetched peak_rss_kib"
    local backend=$1 dir="$out/$1"
    mkdir -p "$dir"
    local env=()
    if [ "$backend" = s3 ]; then
        env=(SUPPORT_STORAGE=s3 SUPPORT_S3_BUCKET=bench
             SUPPORT_S3_ENDPOINT="http://127.0.0.1:$mport" SUPPORT_S3_ALLOW_HTTP=true
             AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1)
    fi
    local token
    token=$(env "${env[@]}" "$bin" --data-dir "$dir/data" token create --role admin 2>/dev/null)
    env "${env[@]}" "$bin" --data-dir "$dir/data" serve --listen 127.0.0.1:0 \
        2> "$dir/server.log" &
    local pid=$!
    pids+=("$pid")
    local url=""
    for _ in $(seq 300); do
        url=$(sed -n 's/^support-server: listening on //p' "$dir/server.log")
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "server did not start" >&2; cat "$dir/server.log" >&2; exit 1; }
    local before=0
    [ "$backend" = s3 ] && before=$(metric "$url" support_s3_image_read_bytes_total)
    local t0 t1 t2 t3
    t0=$(now)
    "$client" "$url" "$token" BENCH-1 "$out/fs.qcow2" 8388608 4 2> "$dir/client.log"
    t1=$(now)
    local id
    id=$(sed -n 's/.* as \([0-9a-f]*\) in .*/\1/p' "$dir/client.log")
    local status=""
    while :; do
        status=$(curl -s -H "authorization: Bearer $token" "$url/api/v1/images/$id" | jq -r .status)
        [ "$status" = ready ] || [ "$status" = failed ] && break
        sleep 0.05
    done
    t2=$(now)
    [ "$status" = ready ] || { echo "image $status" >&2; exit 1; }
    local fetched=0
    [ "$backend" = s3 ] && fetched=$(( $(metric "$url" support_s3_image_read_bytes_total) - before ))
    curl -s -f -H "authorization: Bearer $token" "$url/api/v1/images/$id/raw" -o "$dir/raw"
    sync
    t3=$(now)
    rm -f "$dir/raw"
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc) $(echo "$t3 - $t2" | bc) $fetched $rss"
}

read -r l_up l_an l_raw _ l_rss <<< "$(run_one local)"
read -r s_up s_an s_raw s_fetched s_rss <<< "$(run_one s3)"
rm -rf "$out/local/data" "$out/s3/data"

echo "image: $size bytes of QCOW2 ($data_mib MiB of file data); anchors: sha256sum ${sha_s}s, qemu-img convert -O raw ${qemu_s}s"
printf '%-8s %10s %11s %9s %18s %14s\n' backend "upload s" "analysis s" "/raw s" "analysis fetched" "peak RSS KiB"
printf '%-8s %10.3f %11.3f %9.3f %18s %14s\n' local "$l_up" "$l_an" "$l_raw" "-" "$l_rss"
printf '%-8s %10.3f %11.3f %9.3f %18s %14s\n' s3 "$s_up" "$s_an" "$s_raw" "$s_fetched" "$s_rss"
printf 'analysis fetched %.2f%% of the image from S3\n' "$(echo "100 * $s_fetched / $size" | bc -l)"
