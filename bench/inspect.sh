#!/usr/bin/env bash
# Issue 3's speed figure, side by side in one run on a warm cache:
# `support-agent inspect --json` reading the `e2image -Q` QCOW2 image of a
# 3 TiB lazily-initialised ext4 (~24,000 groups) vs `dumpe2fs` on the raw
# (sparse) file. Target: inspect <= dumpe2fs. Also prints both peak RSS.
#
#   bench/inspect.sh             # builds bench/out/inspect-3T.{img,qcow2} once
#   RUNS=10 bench/inspect.sh     # more timing runs
#
# Needs e2fsprogs; uses hyperfine when installed (apt-get install hyperfine),
# else a plain timing loop; /usr/bin/time for peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
OUT=bench/out
RAW=$OUT/inspect-3T.img
QCOW=$OUT/inspect-3T.qcow2
mkdir -p "$OUT"

export PATH="$PATH:/sbin:/usr/sbin"
export LC_ALL=C TZ=UTC

if [ ! -s "$QCOW" ] || [ ! -s "$RAW" ]; then
    echo "== building a 3 TiB sparse ext4 (lazy_itable_init) and its e2image -Q image (once)"
    rm -f "$RAW" "$QCOW"
    E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 \
        -U 3a3a3a3a-0000-4000-8000-000000000003 \
        -E lazy_itable_init=1,lazy_journal_init=1 "$RAW" 3T
    e2image -Q "$RAW" "$QCOW"
fi

cargo build --release -q -p support-agent
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
AGENT="$target/release/support-agent"

groups=$("$AGENT" inspect --json "$QCOW" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["groups"]))')
echo "== $(du -h --apparent-size "$RAW" | cut -f1) raw (sparse, $(du -h "$RAW" | cut -f1) on disk), $(du -h "$QCOW" | cut -f1) QCOW2, $groups groups"

# Warm the page cache for both inputs.
"$AGENT" inspect --json "$QCOW" >/dev/null
dumpe2fs "$RAW" >/dev/null 2>&1

if command -v hyperfine >/dev/null; then
    hyperfine --warmup 1 --runs "$RUNS" -N \
        -n "support-agent inspect --json (qcow2)" "$AGENT inspect --json $QCOW" \
        -n "dumpe2fs (raw)" "dumpe2fs $RAW" \
        -n "dumpe2fs -h (raw)" "dumpe2fs -h $RAW" \
        --output=null
else
    for cmd in "$AGENT inspect --json $QCOW" "dumpe2fs $RAW"; do
        start=$(date +%s.%N)
        for _ in $(seq "$RUNS"); do $cmd >/dev/null 2>&1; done
        end=$(date +%s.%N)
        echo "$cmd: $(echo "($end - $start) / $RUNS" | bc -l | cut -c1-6) s mean of $RUNS"
    done
fi

echo "== peak RSS"
for cmd in "$AGENT inspect --json $QCOW" "dumpe2fs $RAW"; do
    /usr/bin/time -v -o "$OUT/inspect-time.txt" $cmd >/dev/null 2>&1
    rss=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$OUT/inspect-time.txt")
    echo "$rss KiB  $cmd"
done
