#!/usr/bin/env bash
# Issue 4's speed, size and memory figures, side by side in one run on a warm
# cache: `support-agent export` (scrambled + zstd, and --no-scramble
# --compress none) vs `e2image -Q` on
#   - a 32 GiB ext4 with ~370k inodes in use (370 directories x 1000 files),
#   - a 3 TiB nearly empty ext4 (lazy-initialised groups),
# plus the size of `qemu-img convert -c -o compression_type=zstd` of
# e2image's output, and the peak RSS of each command (/usr/bin/time).
#
#   bench/export.sh                 # builds the filesystems once into bench/out/
#   RUNS=5 bench/export.sh          # more rounds (default 3)
#   ONLY=32g|3t bench/export.sh     # one filesystem only
#
# Wall time is only meaningful on an idle machine; CPU time (user+sys) is
# printed too.
#
# Needs e2fsprogs, qemu-img and GNU time; builds with `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p support-agent
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
AGENT="$target/release/support-agent"
RUNS=${RUNS:-3}
ONLY=${ONLY:-}
out=bench/out
mkdir -p "$out"
PATH="$PATH:/sbin:/usr/sbin"

# Reproducible: fixed UUID, hash seed and creation time.
export E2FSPROGS_FAKE_TIME=1700000000
MKFS_FIXED=(-U 6a3f6c2e-1b5d-4c1e-9a51-0c3c3a5f2b10 -E hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0)

build_32g() {
    local fs="$out/fs32g.img"
    [ -s "$fs" ] && return
    echo "== building $fs: 32 GiB ext4, ~370k files (once)"
    local root
    root=$(mktemp -d)
    python3 - "$root" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(370):
    p = os.path.join(root, f"dir{d:04d}")
    os.mkdir(p)
    for i in range(1000):
        with open(os.path.join(p, f"file_{d:04d}_{i:05d}_with_a_longer_name.txt"), "w") as f:
            if i % 10 == 0:
                f.write("private data " * (i % 300))
PY
    rm -f "$fs.tmp"
    truncate -s 32G "$fs.tmp"
    mke2fs -q -F -t ext4 -N 400000 "${MKFS_FIXED[@]}" -d "$root" "$fs.tmp"
    mv "$fs.tmp" "$fs"
    rm -rf "$root"
}

build_3t() {
    local fs="$out/fs3t.img"
    [ -s "$fs" ] && return
    echo "== building $fs: 3 TiB ext4, nearly empty (once)"
    rm -f "$fs.tmp"
    truncate -s 3T "$fs.tmp"
    mke2fs -q -F -t ext4 "${MKFS_FIXED[@]}" "$fs.tmp"
    mv "$fs.tmp" "$fs"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

timeit() { # label, output file, command...
    local label=$1 file=$2; shift 2
    rm -f "$file"
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "%M %U %S" -o "$tmp/rss" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
    end=$(date +%s.%N)
    read -r m u sy < <(tail -1 "$tmp/rss")
    awk -v l="$label" -v a="$start" -v b="$end" -v m="$m" -v u="$u" -v sy="$sy" -v s="$(stat -c %s "$file")" \
        'BEGIN { printf "  %-40s %7.3f s wall %7.2f s cpu   peak RSS %7.1f MiB   output %10d bytes (%.1f MB)\n", l, b - a, u + sy, m / 1024, s, s / 1e6 }'
}

bench_one() { # name, image
    local name=$1 fs=$2
    echo "== $name ($fs)"
    # Warm the cache with one untimed run of each reader.
    e2image -Q "$fs" "$tmp/warm.qcow2" 2>/dev/null; rm -f "$tmp/warm.qcow2"
    "$AGENT" export --no-scramble --compress none "$fs" "$tmp/warm.qcow2" 2>/dev/null; rm -f "$tmp/warm.qcow2"
    for r in $(seq "$RUNS"); do
        echo " round $r"
        timeit "e2image -Q" "$tmp/e2image.qcow2" e2image -Q "$fs" "$tmp/e2image.qcow2"
        timeit "support-agent export (scrambled, zstd)" "$tmp/agent.qcow2" "$AGENT" export "$fs" "$tmp/agent.qcow2"
        timeit "support-agent export --no-scramble none" "$tmp/plain.qcow2" "$AGENT" export --no-scramble --compress none "$fs" "$tmp/plain.qcow2"
        timeit "support-agent export --no-scramble zstd" "$tmp/plainz.qcow2" "$AGENT" export --no-scramble "$fs" "$tmp/plainz.qcow2"
    done
    timeit "qemu-img convert -c zstd (of e2image)" "$tmp/e2image.zstd.qcow2" \
        qemu-img convert -c -O qcow2 -o compression_type=zstd "$tmp/e2image.qcow2" "$tmp/e2image.zstd.qcow2"
    rm -f "$tmp"/*.qcow2
}

if [ -z "$ONLY" ] || [ "$ONLY" = 32g ]; then
    build_32g
    bench_one "32 GiB, ~370k inodes" "$out/fs32g.img"
fi
if [ -z "$ONLY" ] || [ "$ONLY" = 3t ]; then
    build_3t
    bench_one "3 TiB, nearly empty" "$out/fs3t.img"
fi
