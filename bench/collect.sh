#!/usr/bin/env bash
# End-to-end figure of issue 6, side by side in one run on a warm cache:
# `support-agent collect` of a large test filesystem to a local
# support-server (loopback, every chunk and the whole image verified) vs
# `support-agent export` of the same filesystem to a local file (the anchor;
# target: collect <= 1.5x export). Also prints the peak RSS of both.
#
#   bench/collect.sh            # builds a 32 GiB ext4 with ~370k inodes used
#   BENCH_FS=/path/fs.img bench/collect.sh   # or uses your filesystem image
#   BENCH_FLAGS="--no-scramble" bench/collect.sh   # extra flags for both
#
# Needs e2fsprogs; builds with `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p support-agent -p support-server
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
AGENT="$target/release/support-agent"
SERVER="$target/release/support-server"
RUNS=${RUNS:-3}
FLAGS=${BENCH_FLAGS:-}

tmp=$(mktemp -d)
cleanup() { [ -n "${spid:-}" ] && kill "$spid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

fs=${BENCH_FS:-}
if [ -z "$fs" ]; then
    fs="$tmp/fs.img"
    echo "== building a 32 GiB ext4 with ~370k files (once)"
    mkdir -p "$tmp/root"
    python3 - "$tmp/root" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(370):
    p = os.path.join(root, f"dir{d:04d}")
    os.mkdir(p)
    for i in range(1000):
        open(os.path.join(p, f"file_{d:04d}_{i:05d}_with_a_longer_name.txt"), "w").close()
PY
    truncate -s 32G "$fs"
    mke2fs -q -F -t ext4 -N 400000 -d "$tmp/root" "$fs"
    rm -rf "$tmp/root"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data="$tmp/server"
token=$("$SERVER" --data-dir "$data" token create --role uploader --ticket BENCH-1 2>/dev/null)
"$SERVER" --data-dir "$data" serve --listen "127.0.0.1:$port" --ticket-quota 1099511627776 >"$tmp/server.log" 2>&1 &
spid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

cat "$fs" >/dev/null # warm cache
timeit() { # label, command...
    local label=$1; shift
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$tmp/rss" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
    end=$(date +%s.%N)
    awk -v l="$label" -v a="$start" -v b="$end" -v m="$(tail -1 "$tmp/rss")" \
        'BEGIN { printf "%-8s %7.3f s   peak RSS %6.1f MiB\n", l, b - a, m / 1024 }'
}
echo "== $RUNS rounds, export to a local file vs collect to a local server ($FLAGS)"
for r in $(seq "$RUNS"); do
    timeit export "$AGENT" export $FLAGS "$fs" "$tmp/out.qcow2"
    size=$(stat -c %s "$tmp/out.qcow2"); rm -f "$tmp/out.qcow2"
    timeit collect "$AGENT" collect $FLAGS "$fs" --server "http://127.0.0.1:$port" --token "$token" \
        --state-dir "$tmp/state" --quiet
    echo "image: $size bytes"
done
