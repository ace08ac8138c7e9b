#!/usr/bin/env bash
# Seeds corpus/open_export/ (gitignored) with small filesystems that use the
# structures the readers parse: extents and indirect blocks, htree and inline
# directories, symlinks, xattrs, journal, bigalloc, meta_bg, 1k and 4k blocks.
set -euo pipefail
cd "$(dirname "$0")"
PATH="$PATH:/sbin:/usr/sbin"
out=corpus/open_export
mkdir -p "$out"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/d/sub" "$tree/big"
for i in $(seq 1 120); do echo "x$i" > "$tree/big/name_$i"; done
echo "inline" > "$tree/d/small"
head -c 20000 /dev/urandom > "$tree/d/sub/data"
ln -s "target/of/a/symlink" "$tree/d/link"
ln -s "$(printf 'long/%.0s' $(seq 1 40))" "$tree/d/longlink"
make() {
    local name=$1 size=$2; shift 2
    rm -f "$out/$name"
    mke2fs -q -F -d "$tree" "$@" "$out/$name" "$size" || { echo "skipped $name" >&2; rm -f "$out/$name"; return 0; }
}
make ext2-1k 256k -t ext2 -b 1024
make ext3-1k 1M -t ext3 -b 1024 -J size=1
make ext4-1k 512k -t ext4 -b 1024 -O ^has_journal
make ext4-inline 512k -t ext4 -b 1024 -O ^has_journal,inline_data -I 256
make ext4-metabg 1M -t ext4 -b 1024 -O ^has_journal,meta_bg,^resize_inode
make ext4-4k 1M -t ext4 -b 4096 -O ^has_journal
make ext4-bigalloc 2M -t ext4 -b 1024 -C 4096 -O ^has_journal,bigalloc
make ext4-journal 4M -t ext4 -b 1024 -J size=1
ls -l "$out"
