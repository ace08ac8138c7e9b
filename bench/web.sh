#!/usr/bin/env bash
# The dashboard's image page for a 3 TiB ext4 (24,576 block groups), timed in
# headless Chromium from navigation to every group drawn on the map (target:
# under 2 s), printed next to the reference tool's `dumpe2fs` of the same
# filesystem in the same run. Needs chromium, chromium-driver, e2fsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p support-server --tests
echo "== dashboard (support-server --release, headless Chromium)"
cargo test --release -p support-server --test browser -- --ignored --nocapture big_filesystem_page_load 2>&1 \
    | grep -E "^(round|web:)" || true

echo "== reference: dumpe2fs of the same 3 TiB filesystem"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
truncate -s 3T "$tmp/big.img"
mke2fs -q -F -t ext4 -L big3t "$tmp/big.img"
start=$(date +%s.%N)
dumpe2fs "$tmp/big.img" >/dev/null 2>&1
end=$(date +%s.%N)
awk -v a="$start" -v b="$end" 'BEGIN { printf "dumpe2fs: %.3f s\n", b - a }'
