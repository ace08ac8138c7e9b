#!/usr/bin/env bash
# Upload throughput over loopback through the protocol (every chunk verified
# on arrival, fdatasync'ed, the whole image verified at completion), side by
# side with `sha256sum` of the same file, in one run; plus the server's peak
# RSS for two image sizes (memory must stay flat whatever the size).
#
#   bench/upload.sh [SIZE_MIB]        (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
out=bench/out/upload
rm -rf "$out" && mkdir -p "$out"

# PROFILE=debug uses the dev profile (dependencies such as sha2 and hyper
# are still built with opt-level 3 there), for a quick run.
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release -q -p support-server --bin support-server --example upload
else
    cargo build -q -p support-server --bin support-server --example upload
fi
tdir=${CARGO_TARGET_DIR:-target}
bin=$tdir/$profile/support-server
client=$tdir/$profile/examples/upload

run_one() { # MIB -> prints "seconds peak_rss_kib sha256sum_seconds"
    local mib=$1 dir="$out/$1"
    mkdir -p "$dir"
    head -c "$((mib << 20))" /dev/urandom > "$dir/image"
    local token
    token=$("$bin" --data-dir "$dir/data" token create --role admin 2>/dev/null)
    "$bin" --data-dir "$dir/data" serve --listen 127.0.0.1:0 --workers 0 \
        2> "$dir/server.log" &
    local pid=$!
    local url=""
    for _ in $(seq 100); do
        url=$(sed -n 's/^support-server: listening on //p' "$dir/server.log")
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "server did not start"; cat "$dir/server.log"; exit 1; }
    # Warm the page cache for both contenders.
    cat "$dir/image" > /dev/null
    local t0 t1 t2
    t0=$(date +%s.%N)
    sha256sum "$dir/image" > /dev/null
    t1=$(date +%s.%N)
    "$client" "$url" "$token" BENCH-1 "$dir/image" 8388608 4 2> "$dir/client.log"
    t2=$(date +%s.%N)
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -f "$dir/image"; rm -rf "$dir/data"
    echo "$(echo "$t2 - $t1" | bc) $rss $(echo "$t1 - $t0" | bc)"
}

read -r small_up small_rss small_sha <<< "$(run_one 256)"
read -r big_up big_rss big_sha <<< "$(run_one "$size_mib")"
printf '%-34s %10s %12s %14s %8s\n' "image" "upload s" "sha256sum s" "server peak RSS" "ratio"
printf '%-34s %10.3f %12.3f %11s KiB %8.2f\n' "256 MiB" "$small_up" "$small_sha" "$small_rss" "$(echo "$small_up / $small_sha" | bc -l)"
printf '%-34s %10.3f %12.3f %11s KiB %8.2f\n' "$size_mib MiB" "$big_up" "$big_sha" "$big_rss" "$(echo "$big_up / $big_sha" | bc -l)"
