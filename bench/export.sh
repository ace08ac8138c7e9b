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
# printed too, and the load average before each filesystem. Each filesystem
# ends with the medians and the issue's criteria (scrambled zstd export no
# slower than e2image -Q and no larger than qemu-img's zstd conversion of its
# output on 32 GiB; 10x faster than e2image -Q on 3 TiB; peak RSS < 256 MiB).
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
    awk -v l="$label" -v a="$start" -v b="$end" -v m="$m" -v u="$u" -v sy="$sy" -v s="$(stat -c %s "$file")" \
        'BEGIN { printf "%s\t%.3f\t%.2f\t%.1f\t%d\n", l, b - a, u + sy, m / 1024, s }' >>"$tmp/results"
}

verdict() { # name: issue 4's criteria on the medians of this filesystem's rounds
    python3 - "$1" "$tmp/results" <<'PY'
import statistics, sys
name, path = sys.argv[1], sys.argv[2]
rows = {}
for line in open(path):
    l, wall, cpu, rss, size = line.rstrip("\n").split("\t")
    rows.setdefault(l, []).append((float(wall), float(cpu), float(rss), int(size)))
med = lambda l, i: statistics.median(r[i] for r in rows[l])
e2, ours, qz = "e2image -Q", "support-agent export (scrambled, zstd)", "qemu-img convert -c zstd (of e2image)"
print(f" medians: e2image -Q {med(e2, 0):.3f} s wall ({med(e2, 1):.2f} s cpu); "
      f"scrambled zstd {med(ours, 0):.3f} s wall ({med(ours, 1):.2f} s cpu), "
      f"{med(ours, 3) / 1e6:.2f} MB, peak RSS {max(r[2] for r in rows[ours]):.1f} MiB; "
      f"qemu-img zstd of e2image {med(qz, 3) / 1e6:.2f} MB")
if name == "32g":
    print(f" speed: {'ok' if med(ours, 0) <= med(e2, 0) else 'SLOWER'} than e2image -Q; "
          f"size: {'ok' if med(ours, 3) <= med(qz, 3) else 'LARGER'} than qemu-img zstd")
else:
    x = med(e2, 0) / med(ours, 0)
    print(f" speed: {x:.1f}x e2image -Q ({'ok' if x >= 10 else 'under 10x'})")
print(f" memory: {'ok' if max(r[2] for r in rows[ours]) < 256 else 'OVER'} (limit 256 MiB)")
PY
    rm -f "$tmp/results"
}

bench_one() { # name, image, short name
    local name=$1 fs=$2
    echo "== $name ($fs), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
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
    verdict "$3"
}

if [ -z "$ONLY" ] || [ "$ONLY" = 32g ]; then
    build_32g
    bench_one "32 GiB, ~370k inodes" "$out/fs32g.img" 32g
fi
if [ -z "$ONLY" ] || [ "$ONLY" = 3t ]; then
    build_3t
    bench_one "3 TiB, nearly empty" "$out/fs3t.img" 3t
fi
