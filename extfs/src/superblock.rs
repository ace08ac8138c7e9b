//! The ext2/3/4 superblock (`struct ext4_super_block`), decoded tolerantly.
//!
//! Layout: Linux `Documentation/filesystems/ext4/super.rst` and e2fsprogs
//! `lib/ext2fs/ext2_fs.h` (`struct ext2_super_block`). The superblock is
//! 1024 bytes, little-endian, at byte 1024 of the device (backups at the
//! first block of some groups). Every field is decoded as stored; validation
//! is separate ([`Superblock::geometry_problem`]) so a damaged superblock can
//! still be shown.

use crate::bytes::{le16, le32, le64};
use crate::checksum::crc32c;

/// Byte offset of the primary superblock on the device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock structure in bytes.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `s_magic` of every ext2/3/4 superblock.
pub const EXT2_SUPER_MAGIC: u16 = 0xEF53;
/// Offset of `s_checksum`, the end of the checksummed range.
pub const CHECKSUM_OFFSET: usize = 0x3FC;
/// Smallest block size (`s_log_block_size` 0).
pub const MIN_BLOCK_LOG_SIZE: u32 = 10;
/// Largest block size ext4 defines (64 KiB).
pub const MAX_BLOCK_LOG_SIZE: u32 = 16;
/// Largest cluster size e2fsprogs accepts (`EXT2_MAX_CLUSTER_LOG_SIZE`).
pub const MAX_CLUSTER_LOG_SIZE: u32 = 29;
/// Inode size of revision 0 filesystems.
pub const GOOD_OLD_INODE_SIZE: u16 = 128;
/// First non-reserved inode of revision 0 filesystems.
pub const GOOD_OLD_FIRST_INO: u32 = 11;
/// `s_checksum_type` for CRC32C.
pub const CRC32C_CHKSUM: u8 = 1;

/// `s_state`: unmounted cleanly.
pub const STATE_VALID: u16 = 0x0001;
/// `s_state`: errors detected.
pub const STATE_ERROR: u16 = 0x0002;
/// `s_state`: orphans being recovered.
pub const STATE_ORPHAN: u16 = 0x0004;

/// `s_flags`: signed directory hash in use.
pub const FLAGS_SIGNED_HASH: u32 = 0x0001;
/// `s_flags`: unsigned directory hash in use.
pub const FLAGS_UNSIGNED_HASH: u32 = 0x0002;
/// `s_flags`: test filesystem, OK for development code.
pub const FLAGS_TEST_FILESYS: u32 = 0x0004;

/// Compatible feature bits (`s_feature_compat`).
pub mod compat {
    /// Directory preallocation.
    pub const DIR_PREALLOC: u32 = 0x0001;
    /// "imagic inodes".
    pub const IMAGIC_INODES: u32 = 0x0002;
    /// Has a journal (ext3/ext4).
    pub const HAS_JOURNAL: u32 = 0x0004;
    /// Extended attributes.
    pub const EXT_ATTR: u32 = 0x0008;
    /// Reserved GDT blocks for online growth (resize inode 7).
    pub const RESIZE_INODE: u32 = 0x0010;
    /// Hashed (htree) directories.
    pub const DIR_INDEX: u32 = 0x0020;
    /// Lazy block groups (obsolete).
    pub const LAZY_BG: u32 = 0x0040;
    /// Snapshot exclude bitmap.
    pub const EXCLUDE_BITMAP: u32 = 0x0100;
    /// At most two backup superblocks (`s_backup_bgs`).
    pub const SPARSE_SUPER2: u32 = 0x0200;
    /// Fast commits in the journal.
    pub const FAST_COMMIT: u32 = 0x0400;
    /// Inode numbers never change.
    pub const STABLE_INODES: u32 = 0x0800;
    /// Orphan file (`s_orphan_file_inum`).
    pub const ORPHAN_FILE: u32 = 0x1000;
}

/// Read-only compatible feature bits (`s_feature_ro_compat`).
pub mod ro_compat {
    /// Backups only in groups 0, 1 and powers of 3, 5, 7.
    pub const SPARSE_SUPER: u32 = 0x0001;
    /// Files larger than 2 GiB.
    pub const LARGE_FILE: u32 = 0x0002;
    /// Block counts in units of the block size (`huge_file`).
    pub const HUGE_FILE: u32 = 0x0008;
    /// Group descriptor CRC16 (`uninit_bg`).
    pub const GDT_CSUM: u32 = 0x0010;
    /// More than 65000 subdirectories.
    pub const DIR_NLINK: u32 = 0x0020;
    /// Large inodes carry `i_extra_isize`.
    pub const EXTRA_ISIZE: u32 = 0x0040;
    /// Snapshot present (not supported by e2fsprogs' feature list).
    pub const HAS_SNAPSHOT: u32 = 0x0080;
    /// Quota inodes.
    pub const QUOTA: u32 = 0x0100;
    /// Allocation in clusters.
    pub const BIGALLOC: u32 = 0x0200;
    /// CRC32C checksums on all metadata.
    pub const METADATA_CSUM: u32 = 0x0400;
    /// Replica.
    pub const REPLICA: u32 = 0x0800;
    /// Read-only filesystem.
    pub const READONLY: u32 = 0x1000;
    /// Project quota.
    pub const PROJECT: u32 = 0x2000;
    /// Shared blocks.
    pub const SHARED_BLOCKS: u32 = 0x4000;
    /// fs-verity.
    pub const VERITY: u32 = 0x8000;
    /// The orphan file has entries.
    pub const ORPHAN_PRESENT: u32 = 0x10000;
}

/// Incompatible feature bits (`s_feature_incompat`).
pub mod incompat {
    /// Compression.
    pub const COMPRESSION: u32 = 0x0001;
    /// Directory entries record the file type.
    pub const FILETYPE: u32 = 0x0002;
    /// The journal needs recovery.
    pub const RECOVER: u32 = 0x0004;
    /// This is an external journal device.
    pub const JOURNAL_DEV: u32 = 0x0008;
    /// Meta block groups.
    pub const META_BG: u32 = 0x0010;
    /// Extent-mapped files.
    pub const EXTENTS: u32 = 0x0040;
    /// 64-bit block numbers and large descriptors.
    pub const BIT64: u32 = 0x0080;
    /// Multiple mount protection.
    pub const MMP: u32 = 0x0100;
    /// Flexible block groups.
    pub const FLEX_BG: u32 = 0x0200;
    /// Extended attribute values in inodes.
    pub const EA_INODE: u32 = 0x0400;
    /// Data in directory entries.
    pub const DIRDATA: u32 = 0x1000;
    /// Checksum seed stored in the superblock.
    pub const CSUM_SEED: u32 = 0x2000;
    /// Large directories (> 2 GiB or 3-level htree).
    pub const LARGEDIR: u32 = 0x4000;
    /// Data inline in the inode.
    pub const INLINE_DATA: u32 = 0x8000;
    /// Encrypted files.
    pub const ENCRYPT: u32 = 0x10000;
    /// Case-insensitive names.
    pub const CASEFOLD: u32 = 0x20000;
}

/// Feature names as e2fsprogs prints them (`lib/e2p/feature.c`); the first
/// name listed for a bit is the one printed.
const COMPAT_NAMES: &[(u32, &str)] = &[
    (compat::DIR_PREALLOC, "dir_prealloc"),
    (compat::HAS_JOURNAL, "has_journal"),
    (compat::IMAGIC_INODES, "imagic_inodes"),
    (compat::EXT_ATTR, "ext_attr"),
    (compat::DIR_INDEX, "dir_index"),
    (compat::RESIZE_INODE, "resize_inode"),
    (compat::LAZY_BG, "lazy_bg"),
    (compat::EXCLUDE_BITMAP, "snapshot_bitmap"),
    (compat::SPARSE_SUPER2, "sparse_super2"),
    (compat::FAST_COMMIT, "fast_commit"),
    (compat::STABLE_INODES, "stable_inodes"),
    (compat::ORPHAN_FILE, "orphan_file"),
];
const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (ro_compat::SPARSE_SUPER, "sparse_super"),
    (ro_compat::LARGE_FILE, "large_file"),
    (ro_compat::HUGE_FILE, "huge_file"),
    (ro_compat::GDT_CSUM, "uninit_bg"),
    (ro_compat::DIR_NLINK, "dir_nlink"),
    (ro_compat::EXTRA_ISIZE, "extra_isize"),
    (ro_compat::QUOTA, "quota"),
    (ro_compat::BIGALLOC, "bigalloc"),
    (ro_compat::METADATA_CSUM, "metadata_csum"),
    (ro_compat::REPLICA, "replica"),
    (ro_compat::READONLY, "read-only"),
    (ro_compat::PROJECT, "project"),
    (ro_compat::SHARED_BLOCKS, "shared_blocks"),
    (ro_compat::VERITY, "verity"),
    (ro_compat::ORPHAN_PRESENT, "orphan_present"),
];
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (incompat::COMPRESSION, "compression"),
    (incompat::FILETYPE, "filetype"),
    (incompat::RECOVER, "needs_recovery"),
    (incompat::JOURNAL_DEV, "journal_dev"),
    (incompat::EXTENTS, "extent"),
    (incompat::META_BG, "meta_bg"),
    (incompat::BIT64, "64bit"),
    (incompat::MMP, "mmp"),
    (incompat::FLEX_BG, "flex_bg"),
    (incompat::EA_INODE, "ea_inode"),
    (incompat::DIRDATA, "dirdata"),
    (incompat::CSUM_SEED, "metadata_csum_seed"),
    (incompat::LARGEDIR, "large_dir"),
    (incompat::INLINE_DATA, "inline_data"),
    (incompat::ENCRYPT, "encrypt"),
    (incompat::CASEFOLD, "casefold"),
];

/// Names of the set bits of one feature word, in bit order, unknown bits as
/// `FEATURE_<C|R|I><bit>` exactly as `e2p_feature2string`.
fn feature_words(mask: u32, names: &[(u32, &str)], letter: char, out: &mut Vec<String>) {
    for bit in 0..32 {
        let m = 1u32 << bit;
        if mask & m == 0 {
            continue;
        }
        match names.iter().find(|(b, _)| *b == m) {
            Some((_, n)) => out.push((*n).to_string()),
            None => out.push(format!("FEATURE_{letter}{bit}")),
        }
    }
}

/// Default mount option names (`lib/e2p/mntopts.c`).
const MNTOPT_NAMES: &[(u32, &str)] = &[
    (0x0001, "debug"),
    (0x0002, "bsdgroups"),
    (0x0004, "user_xattr"),
    (0x0008, "acl"),
    (0x0010, "uid16"),
    (0x0020, "journal_data"),
    (0x0040, "journal_data_ordered"),
    (0x0060, "journal_data_writeback"),
    (0x0100, "nobarrier"),
    (0x0200, "block_validity"),
    (0x0400, "discard"),
    (0x0800, "nodelalloc"),
];
/// The two-bit journalling mode inside `s_default_mount_opts`.
const DEFM_JMODE: u32 = 0x0060;

fn mntopt_name(mask: u32) -> String {
    match MNTOPT_NAMES.iter().find(|(m, _)| *m == mask) {
        Some((_, n)) => (*n).to_string(),
        None => format!("MNTOPT_{}", 31 - mask.leading_zeros()),
    }
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        out.copy_from_slice(s);
    }
    out
}

/// Bytes of a fixed-size, NUL-padded string field up to the first NUL, as
/// text (lossy: names from a broken disk need not be UTF-8).
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A UUID as e2fsprogs prints it, or `None` for the all-zero UUID (printed
/// `<none>`).
pub fn uuid_string(u: &[u8; 16]) -> Option<String> {
    if u.iter().all(|&b| b == 0) {
        return None;
    }
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
    ))
}

/// The superblock, every field of `struct ext4_super_block` as stored.
///
/// Field names are the kernel's without the `s_` prefix; the comment gives
/// the byte offset inside the 1024-byte structure. Split fields (`_lo`/`_hi`)
/// are kept apart; the methods combine them the way the features say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 0x000 `s_inodes_count`.
    pub inodes_count: u32,
    /// 0x004 `s_blocks_count_lo`.
    pub blocks_count_lo: u32,
    /// 0x008 `s_r_blocks_count_lo`.
    pub r_blocks_count_lo: u32,
    /// 0x00C `s_free_blocks_count_lo`.
    pub free_blocks_count_lo: u32,
    /// 0x010 `s_free_inodes_count`.
    pub free_inodes_count: u32,
    /// 0x014 `s_first_data_block` (1 on 1 KiB-block filesystems, else 0).
    pub first_data_block: u32,
    /// 0x018 `s_log_block_size`: block size is `1024 << this`.
    pub log_block_size: u32,
    /// 0x01C `s_log_cluster_size`: cluster size is `1024 << this` (bigalloc).
    pub log_cluster_size: u32,
    /// 0x020 `s_blocks_per_group`.
    pub blocks_per_group: u32,
    /// 0x024 `s_clusters_per_group` (fragments per group before bigalloc).
    pub clusters_per_group: u32,
    /// 0x028 `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// 0x02C `s_mtime`: last mount time.
    pub mtime: u32,
    /// 0x030 `s_wtime`: last write time.
    pub wtime: u32,
    /// 0x034 `s_mnt_count`.
    pub mnt_count: u16,
    /// 0x036 `s_max_mnt_count` (signed; -1 disables the check).
    pub max_mnt_count: i16,
    /// 0x038 `s_magic` (0xEF53).
    pub magic: u16,
    /// 0x03A `s_state` (`STATE_*`).
    pub state: u16,
    /// 0x03C `s_errors`: 1 continue, 2 remount read-only, 3 panic.
    pub errors: u16,
    /// 0x03E `s_minor_rev_level`.
    pub minor_rev_level: u16,
    /// 0x040 `s_lastcheck`.
    pub lastcheck: u32,
    /// 0x044 `s_checkinterval` in seconds.
    pub checkinterval: u32,
    /// 0x048 `s_creator_os`: 0 Linux, 1 Hurd, 2 Masix, 3 FreeBSD, 4 Lites.
    pub creator_os: u32,
    /// 0x04C `s_rev_level`: 0 original, 1 dynamic.
    pub rev_level: u32,
    /// 0x050 `s_def_resuid`.
    pub def_resuid: u16,
    /// 0x052 `s_def_resgid`.
    pub def_resgid: u16,
    /// 0x054 `s_first_ino`: first non-reserved inode.
    pub first_ino: u32,
    /// 0x058 `s_inode_size`.
    pub inode_size: u16,
    /// 0x05A `s_block_group_nr`: group holding this copy.
    pub block_group_nr: u16,
    /// 0x05C `s_feature_compat`.
    pub feature_compat: u32,
    /// 0x060 `s_feature_incompat`.
    pub feature_incompat: u32,
    /// 0x064 `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// 0x068 `s_uuid`.
    pub uuid: [u8; 16],
    /// 0x078 `s_volume_name` (NUL-padded).
    pub volume_name: [u8; 16],
    /// 0x088 `s_last_mounted` (NUL-padded).
    pub last_mounted: [u8; 64],
    /// 0x0C8 `s_algorithm_usage_bitmap` (compression).
    pub algorithm_usage_bitmap: u32,
    /// 0x0CC `s_prealloc_blocks`.
    pub prealloc_blocks: u8,
    /// 0x0CD `s_prealloc_dir_blocks`.
    pub prealloc_dir_blocks: u8,
    /// 0x0CE `s_reserved_gdt_blocks`.
    pub reserved_gdt_blocks: u16,
    /// 0x0D0 `s_journal_uuid`.
    pub journal_uuid: [u8; 16],
    /// 0x0E0 `s_journal_inum`.
    pub journal_inum: u32,
    /// 0x0E4 `s_journal_dev`.
    pub journal_dev: u32,
    /// 0x0E8 `s_last_orphan`: head of the orphan inode list.
    pub last_orphan: u32,
    /// 0x0EC `s_hash_seed` (four u32, shown as a UUID).
    pub hash_seed: [u8; 16],
    /// 0x0FC `s_def_hash_version`.
    pub def_hash_version: u8,
    /// 0x0FD `s_jnl_backup_type`.
    pub jnl_backup_type: u8,
    /// 0x0FE `s_desc_size` (64bit only).
    pub desc_size: u16,
    /// 0x100 `s_default_mount_opts`.
    pub default_mount_opts: u32,
    /// 0x104 `s_first_meta_bg`.
    pub first_meta_bg: u32,
    /// 0x108 `s_mkfs_time`.
    pub mkfs_time: u32,
    /// 0x10C `s_jnl_blocks`: backup of the journal inode's `i_block` and size.
    pub jnl_blocks: [u32; 17],
    /// 0x150 `s_blocks_count_hi`.
    pub blocks_count_hi: u32,
    /// 0x154 `s_r_blocks_count_hi`.
    pub r_blocks_count_hi: u32,
    /// 0x158 `s_free_blocks_count_hi`.
    pub free_blocks_count_hi: u32,
    /// 0x15C `s_min_extra_isize`.
    pub min_extra_isize: u16,
    /// 0x15E `s_want_extra_isize`.
    pub want_extra_isize: u16,
    /// 0x160 `s_flags` (`FLAGS_*`).
    pub flags: u32,
    /// 0x164 `s_raid_stride`.
    pub raid_stride: u16,
    /// 0x166 `s_mmp_interval` (seconds).
    pub mmp_update_interval: u16,
    /// 0x168 `s_mmp_block`.
    pub mmp_block: u64,
    /// 0x170 `s_raid_stripe_width`.
    pub raid_stripe_width: u32,
    /// 0x174 `s_log_groups_per_flex`.
    pub log_groups_per_flex: u8,
    /// 0x175 `s_checksum_type` (1 = crc32c).
    pub checksum_type: u8,
    /// 0x176 `s_encryption_level`.
    pub encryption_level: u8,
    /// 0x177 `s_reserved_pad`.
    pub reserved_pad: u8,
    /// 0x178 `s_kbytes_written`.
    pub kbytes_written: u64,
    /// 0x180 `s_snapshot_inum`.
    pub snapshot_inum: u32,
    /// 0x184 `s_snapshot_id`.
    pub snapshot_id: u32,
    /// 0x188 `s_snapshot_r_blocks_count`.
    pub snapshot_r_blocks_count: u64,
    /// 0x190 `s_snapshot_list`.
    pub snapshot_list: u32,
    /// 0x194 `s_error_count`.
    pub error_count: u32,
    /// 0x198 `s_first_error_time`.
    pub first_error_time: u32,
    /// 0x19C `s_first_error_ino`.
    pub first_error_ino: u32,
    /// 0x1A0 `s_first_error_block`.
    pub first_error_block: u64,
    /// 0x1A8 `s_first_error_func` (NUL-padded).
    pub first_error_func: [u8; 32],
    /// 0x1C8 `s_first_error_line`.
    pub first_error_line: u32,
    /// 0x1CC `s_last_error_time`.
    pub last_error_time: u32,
    /// 0x1D0 `s_last_error_ino`.
    pub last_error_ino: u32,
    /// 0x1D4 `s_last_error_line`.
    pub last_error_line: u32,
    /// 0x1D8 `s_last_error_block`.
    pub last_error_block: u64,
    /// 0x1E0 `s_last_error_func` (NUL-padded).
    pub last_error_func: [u8; 32],
    /// 0x200 `s_mount_opts` (NUL-padded).
    pub mount_opts: [u8; 64],
    /// 0x240 `s_usr_quota_inum`.
    pub usr_quota_inum: u32,
    /// 0x244 `s_grp_quota_inum`.
    pub grp_quota_inum: u32,
    /// 0x248 `s_overhead_clusters`.
    pub overhead_clusters: u32,
    /// 0x24C `s_backup_bgs` (sparse_super2).
    pub backup_bgs: [u32; 2],
    /// 0x254 `s_encrypt_algos`.
    pub encrypt_algos: [u8; 4],
    /// 0x258 `s_encrypt_pw_salt`.
    pub encrypt_pw_salt: [u8; 16],
    /// 0x268 `s_lpf_ino`: lost+found inode.
    pub lpf_ino: u32,
    /// 0x26C `s_prj_quota_inum`.
    pub prj_quota_inum: u32,
    /// 0x270 `s_checksum_seed` (with `metadata_csum_seed`).
    pub checksum_seed: u32,
    /// 0x274 `s_wtime_hi`.
    pub wtime_hi: u8,
    /// 0x275 `s_mtime_hi`.
    pub mtime_hi: u8,
    /// 0x276 `s_mkfs_time_hi`.
    pub mkfs_time_hi: u8,
    /// 0x277 `s_lastcheck_hi`.
    pub lastcheck_hi: u8,
    /// 0x278 `s_first_error_time_hi`.
    pub first_error_time_hi: u8,
    /// 0x279 `s_last_error_time_hi`.
    pub last_error_time_hi: u8,
    /// 0x27A `s_first_error_errcode`.
    pub first_error_errcode: u8,
    /// 0x27B `s_last_error_errcode`.
    pub last_error_errcode: u8,
    /// 0x27C `s_encoding` (casefold charset).
    pub encoding: u16,
    /// 0x27E `s_encoding_flags`.
    pub encoding_flags: u16,
    /// 0x280 `s_orphan_file_inum`.
    pub orphan_file_inum: u32,
    /// 0x3FC `s_checksum`: crc32c of bytes 0..0x3FC (metadata_csum).
    pub checksum: u32,
    /// The 1024 bytes as read (for checksums and reserved fields).
    pub raw: Box<[u8; SUPERBLOCK_SIZE]>,
}

impl Superblock {
    /// Decodes a superblock from its 1024 bytes (shorter input reads as
    /// zeros). Never fails: see [`Superblock::geometry_problem`].
    pub fn parse(b: &[u8]) -> Superblock {
        let mut raw = Box::new([0u8; SUPERBLOCK_SIZE]);
        let n = b.len().min(SUPERBLOCK_SIZE);
        raw[..n].copy_from_slice(&b[..n]);
        let b: &[u8] = &raw[..];
        let mut jnl_blocks = [0u32; 17];
        for (i, v) in jnl_blocks.iter_mut().enumerate() {
            *v = le32(b, 0x10C + 4 * i);
        }
        Superblock {
            inodes_count: le32(b, 0x000),
            blocks_count_lo: le32(b, 0x004),
            r_blocks_count_lo: le32(b, 0x008),
            free_blocks_count_lo: le32(b, 0x00C),
            free_inodes_count: le32(b, 0x010),
            first_data_block: le32(b, 0x014),
            log_block_size: le32(b, 0x018),
            log_cluster_size: le32(b, 0x01C),
            blocks_per_group: le32(b, 0x020),
            clusters_per_group: le32(b, 0x024),
            inodes_per_group: le32(b, 0x028),
            mtime: le32(b, 0x02C),
            wtime: le32(b, 0x030),
            mnt_count: le16(b, 0x034),
            max_mnt_count: le16(b, 0x036) as i16,
            magic: le16(b, 0x038),
            state: le16(b, 0x03A),
            errors: le16(b, 0x03C),
            minor_rev_level: le16(b, 0x03E),
            lastcheck: le32(b, 0x040),
            checkinterval: le32(b, 0x044),
            creator_os: le32(b, 0x048),
            rev_level: le32(b, 0x04C),
            def_resuid: le16(b, 0x050),
            def_resgid: le16(b, 0x052),
            first_ino: le32(b, 0x054),
            inode_size: le16(b, 0x058),
            block_group_nr: le16(b, 0x05A),
            feature_compat: le32(b, 0x05C),
            feature_incompat: le32(b, 0x060),
            feature_ro_compat: le32(b, 0x064),
            uuid: arr(b, 0x068),
            volume_name: arr(b, 0x078),
            last_mounted: arr(b, 0x088),
            algorithm_usage_bitmap: le32(b, 0x0C8),
            prealloc_blocks: b[0x0CC],
            prealloc_dir_blocks: b[0x0CD],
            reserved_gdt_blocks: le16(b, 0x0CE),
            journal_uuid: arr(b, 0x0D0),
            journal_inum: le32(b, 0x0E0),
            journal_dev: le32(b, 0x0E4),
            last_orphan: le32(b, 0x0E8),
            hash_seed: arr(b, 0x0EC),
            def_hash_version: b[0x0FC],
            jnl_backup_type: b[0x0FD],
            desc_size: le16(b, 0x0FE),
            default_mount_opts: le32(b, 0x100),
            first_meta_bg: le32(b, 0x104),
            mkfs_time: le32(b, 0x108),
            jnl_blocks,
            blocks_count_hi: le32(b, 0x150),
            r_blocks_count_hi: le32(b, 0x154),
            free_blocks_count_hi: le32(b, 0x158),
            min_extra_isize: le16(b, 0x15C),
            want_extra_isize: le16(b, 0x15E),
            flags: le32(b, 0x160),
            raid_stride: le16(b, 0x164),
            mmp_update_interval: le16(b, 0x166),
            mmp_block: le64(b, 0x168),
            raid_stripe_width: le32(b, 0x170),
            log_groups_per_flex: b[0x174],
            checksum_type: b[0x175],
            encryption_level: b[0x176],
            reserved_pad: b[0x177],
            kbytes_written: le64(b, 0x178),
            snapshot_inum: le32(b, 0x180),
            snapshot_id: le32(b, 0x184),
            snapshot_r_blocks_count: le64(b, 0x188),
            snapshot_list: le32(b, 0x190),
            error_count: le32(b, 0x194),
            first_error_time: le32(b, 0x198),
            first_error_ino: le32(b, 0x19C),
            first_error_block: le64(b, 0x1A0),
            first_error_func: arr(b, 0x1A8),
            first_error_line: le32(b, 0x1C8),
            last_error_time: le32(b, 0x1CC),
            last_error_ino: le32(b, 0x1D0),
            last_error_line: le32(b, 0x1D4),
            last_error_block: le64(b, 0x1D8),
            last_error_func: arr(b, 0x1E0),
            mount_opts: arr(b, 0x200),
            usr_quota_inum: le32(b, 0x240),
            grp_quota_inum: le32(b, 0x244),
            overhead_clusters: le32(b, 0x248),
            backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            encrypt_algos: arr(b, 0x254),
            encrypt_pw_salt: arr(b, 0x258),
            lpf_ino: le32(b, 0x268),
            prj_quota_inum: le32(b, 0x26C),
            checksum_seed: le32(b, 0x270),
            wtime_hi: b[0x274],
            mtime_hi: b[0x275],
            mkfs_time_hi: b[0x276],
            lastcheck_hi: b[0x277],
            first_error_time_hi: b[0x278],
            last_error_time_hi: b[0x279],
            first_error_errcode: b[0x27A],
            last_error_errcode: b[0x27B],
            encoding: le16(b, 0x27C),
            encoding_flags: le16(b, 0x27E),
            orphan_file_inum: le32(b, 0x280),
            checksum: le32(b, CHECKSUM_OFFSET),
            raw,
        }
    }

    /// Whether a compat feature bit is set.
    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }
    /// Whether a ro_compat feature bit is set.
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.feature_ro_compat & bit != 0
    }
    /// Whether an incompat feature bit is set.
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }
    /// `64bit`: block numbers and counts have high halves.
    pub fn is_64bit(&self) -> bool {
        self.has_incompat(incompat::BIT64)
    }

    fn wide(&self, lo: u32, hi: u32) -> u64 {
        u64::from(lo)
            | if self.is_64bit() {
                u64::from(hi) << 32
            } else {
                0
            }
    }
    /// Blocks in the filesystem (high half only with `64bit`).
    pub fn blocks_count(&self) -> u64 {
        self.wide(self.blocks_count_lo, self.blocks_count_hi)
    }
    /// Reserved blocks.
    pub fn r_blocks_count(&self) -> u64 {
        self.wide(self.r_blocks_count_lo, self.r_blocks_count_hi)
    }
    /// Free blocks as the superblock records them.
    pub fn free_blocks_count(&self) -> u64 {
        self.wide(self.free_blocks_count_lo, self.free_blocks_count_hi)
    }
    /// Block size in bytes, if `s_log_block_size` is sane (≤ 64 KiB).
    pub fn block_size(&self) -> Option<u64> {
        (self.log_block_size <= MAX_BLOCK_LOG_SIZE - MIN_BLOCK_LOG_SIZE)
            .then(|| 1024u64 << self.log_block_size)
    }
    /// Cluster size in bytes as e2fsprogs computes it (`EXT2_CLUSTER_SIZE`),
    /// if sane.
    pub fn cluster_size(&self) -> Option<u64> {
        (self.log_cluster_size <= MAX_CLUSTER_LOG_SIZE - MIN_BLOCK_LOG_SIZE)
            .then(|| 1024u64 << self.log_cluster_size)
    }
    /// Inode size: 128 on revision 0, else `s_inode_size`.
    pub fn inode_size(&self) -> u16 {
        if self.rev_level == 0 {
            GOOD_OLD_INODE_SIZE
        } else {
            self.inode_size
        }
    }
    /// First non-reserved inode: 11 on revision 0.
    pub fn first_ino(&self) -> u32 {
        if self.rev_level == 0 {
            GOOD_OLD_FIRST_INO
        } else {
            self.first_ino
        }
    }
    /// Group descriptor size in bytes (`EXT2_DESC_SIZE`): `s_desc_size` with
    /// `64bit`, 32 otherwise.
    pub fn desc_size(&self) -> u16 {
        if self.is_64bit() {
            self.desc_size
        } else {
            32
        }
    }

    /// Time fields widened with their `_hi` byte (seconds since the epoch).
    pub fn mkfs_time_full(&self) -> i64 {
        i64::from(self.mkfs_time) | (i64::from(self.mkfs_time_hi) << 32)
    }
    /// Last mount time with `s_mtime_hi`.
    pub fn mtime_full(&self) -> i64 {
        i64::from(self.mtime) | (i64::from(self.mtime_hi) << 32)
    }
    /// Last write time with `s_wtime_hi`.
    pub fn wtime_full(&self) -> i64 {
        i64::from(self.wtime) | (i64::from(self.wtime_hi) << 32)
    }
    /// Last check time with `s_lastcheck_hi`.
    pub fn lastcheck_full(&self) -> i64 {
        i64::from(self.lastcheck) | (i64::from(self.lastcheck_hi) << 32)
    }
    /// First error time with `s_first_error_time_hi`.
    pub fn first_error_time_full(&self) -> i64 {
        i64::from(self.first_error_time) | (i64::from(self.first_error_time_hi) << 32)
    }
    /// Last error time with `s_last_error_time_hi`.
    pub fn last_error_time_full(&self) -> i64 {
        i64::from(self.last_error_time) | (i64::from(self.last_error_time_hi) << 32)
    }

    /// The feature words as `dumpe2fs` lists them: compat, then incompat,
    /// then ro_compat (the order of the words in the superblock).
    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        feature_words(self.feature_compat, COMPAT_NAMES, 'C', &mut out);
        feature_words(self.feature_incompat, INCOMPAT_NAMES, 'I', &mut out);
        feature_words(self.feature_ro_compat, RO_COMPAT_NAMES, 'R', &mut out);
        out
    }

    /// Default mount options as `dumpe2fs` lists them (journal mode first).
    pub fn default_mount_option_names(&self) -> Vec<String> {
        let mask = self.default_mount_opts;
        let mut out = Vec::new();
        if mask & DEFM_JMODE != 0 {
            out.push(mntopt_name(mask & DEFM_JMODE));
        }
        for bit in 0..32 {
            let m = 1u32 << bit;
            if m & DEFM_JMODE != 0 || mask & m == 0 {
                continue;
            }
            out.push(mntopt_name(m));
        }
        out
    }

    /// `s_flags` words as `dumpe2fs` prints them (known flags only).
    pub fn flag_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.flags & FLAGS_SIGNED_HASH != 0 {
            out.push("signed_directory_hash".to_string());
        }
        if self.flags & FLAGS_UNSIGNED_HASH != 0 {
            out.push("unsigned_directory_hash".to_string());
        }
        if self.flags & FLAGS_TEST_FILESYS != 0 {
            out.push("test_filesystem".to_string());
        }
        out
    }

    /// The checksum `s_checksum` should hold: crc32c(~0) of bytes 0..0x3FC.
    pub fn computed_checksum(&self) -> u32 {
        crc32c(!0, &self.raw[..CHECKSUM_OFFSET])
    }

    /// Whether this superblock has `metadata_csum` and its checksum matches
    /// (`true` also when there is no checksum to verify).
    pub fn checksum_ok(&self) -> bool {
        !self.has_ro_compat(ro_compat::METADATA_CSUM) || self.checksum == self.computed_checksum()
    }

    /// Why this superblock cannot describe a readable filesystem, or `None`
    /// if its geometry is usable. Mirrors the fatal checks of e2fsprogs'
    /// `ext2fs_open2`; softer inconsistencies are left to the findings.
    pub fn geometry_problem(&self) -> Option<String> {
        if self.magic != EXT2_SUPER_MAGIC {
            return Some(format!("bad magic number 0x{:04X}", self.magic));
        }
        let Some(bs) = self.block_size() else {
            return Some(format!(
                "impossible block size (log {})",
                self.log_block_size
            ));
        };
        if self.cluster_size().is_none() || self.log_cluster_size < self.log_block_size {
            return Some(format!(
                "impossible cluster size (log {})",
                self.log_cluster_size
            ));
        }
        let bigalloc = self.has_ro_compat(ro_compat::BIGALLOC);
        if !bigalloc && self.log_cluster_size != self.log_block_size {
            return Some("cluster size differs from block size without bigalloc".into());
        }
        if self.log_groups_per_flex > 31 {
            return Some(format!(
                "impossible flex_bg size (log {})",
                self.log_groups_per_flex
            ));
        }
        let isz = u64::from(self.inode_size());
        if isz < u64::from(GOOD_OLD_INODE_SIZE) || isz > bs || !isz.is_power_of_two() {
            return Some(format!("impossible inode size {isz}"));
        }
        if self.is_64bit() {
            let d = self.desc_size;
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                return Some(format!("impossible group descriptor size {d}"));
            }
        }
        let ratio_bits = self.log_cluster_size - self.log_block_size;
        if u64::from(self.blocks_per_group) != u64::from(self.clusters_per_group) << ratio_bits {
            return Some("blocks per group disagree with clusters per group".into());
        }
        if self.has_incompat(incompat::JOURNAL_DEV) {
            // An external journal has no groups or inodes (ext2fs_open2 stops
            // here too).
            return None;
        }
        if self.inodes_per_group == 0 {
            return Some("zero inodes per group".into());
        }
        if self.blocks_per_group < 8 || u64::from(self.clusters_per_group) > 8 * bs {
            return Some(format!(
                "impossible blocks per group {}",
                self.blocks_per_group
            ));
        }
        let inode_blocks = (u64::from(self.inodes_per_group) * isz).div_ceil(bs);
        if u64::from(self.inodes_per_group) > 8 * bs || inode_blocks > 8 * bs {
            return Some(format!(
                "impossible inodes per group {}",
                self.inodes_per_group
            ));
        }
        if u64::from(self.first_data_block) >= self.blocks_count() {
            return Some(format!(
                "first data block {} beyond block count {}",
                self.first_data_block,
                self.blocks_count()
            ));
        }
        None
    }
}

/// `s_errors` as `dumpe2fs` prints it.
pub fn errors_behavior_name(errors: u16) -> &'static str {
    match errors {
        1 => "Continue",
        2 => "Remount read-only",
        3 => "Panic",
        _ => "Unknown (continue)",
    }
}

/// `s_state` as `dumpe2fs` prints it ("clean", "not clean with errors"...).
pub fn state_name(state: u16) -> String {
    let mut s = String::from(if state & STATE_VALID != 0 {
        "clean"
    } else {
        "not clean"
    });
    if state & STATE_ERROR != 0 {
        s.push_str(" with errors");
    }
    s
}

/// `s_creator_os` as `dumpe2fs` prints it.
pub fn os_name(os: u32) -> &'static str {
    match os {
        0 => "Linux",
        1 => "Hurd",
        2 => "Masix",
        3 => "FreeBSD",
        4 => "Lites",
        _ => "(unknown os)",
    }
}

/// Directory hash algorithm name (`e2p_hash2string`).
pub fn hash_name(v: u8) -> String {
    match v {
        0 => "legacy".into(),
        1 => "half_md4".into(),
        2 => "tea".into(),
        n => format!("HASHALG_{n}"),
    }
}

/// Casefold encoding name (`e2p_encoding2str`).
pub fn encoding_name(e: u16) -> String {
    match e {
        1 => "utf8-12.1".into(),
        n => format!("UNKNOWN_ENCODING_{n}"),
    }
}

/// Kernel error code name recorded with first/last error (`e2p_errcode2str`).
pub fn errcode_name(e: u8) -> String {
    const NAMES: [&str; 18] = [
        "",
        "UNKNOWN",
        "EIO",
        "ENOMEM",
        "EFSBADCRC",
        "EFSCORRUPTED",
        "ENOSPC",
        "ENOKEY",
        "EROFS",
        "EFBIG",
        "EEXIST",
        "ERANGE",
        "EOVERFLOW",
        "EBUSY",
        "ENOTDIR",
        "ENOTEMPTY",
        "ESHUTDOWN",
        "EFAULT",
    ];
    match NAMES.get(usize::from(e)) {
        Some(n) => (*n).to_string(),
        None => format!("UNKNOWN_ERRCODE_{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_feature_bits_are_named_like_e2p() {
        let mut raw = [0u8; 1024];
        raw[0x5C] = 0x80; // compat bit 7 (unnamed)
        raw[0x60] = 0x42; // filetype + extent
        raw[0x64] = 0x04; // ro bit 2 (unnamed)
        let sb = Superblock::parse(&raw);
        assert_eq!(
            sb.feature_names(),
            ["FEATURE_C7", "filetype", "extent", "FEATURE_R2"]
        );
    }

    #[test]
    fn mount_options_put_journal_mode_first() {
        let mut raw = [0u8; 1024];
        raw[0x100] = 0x0C | 0x60;
        let sb = Superblock::parse(&raw);
        assert_eq!(
            sb.default_mount_option_names(),
            ["journal_data_writeback", "user_xattr", "acl"]
        );
    }

    #[test]
    fn short_or_garbage_input_never_panics() {
        let sb = Superblock::parse(&[0xFF; 10]);
        assert!(sb.geometry_problem().is_some());
        let sb = Superblock::parse(&[0xFF; 1024]);
        assert!(sb.geometry_problem().is_some());
        let _ = sb.feature_names();
        let _ = sb.default_mount_option_names();
        let _ = errcode_name(255);
    }

    #[test]
    fn uuid_formatting() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(
            uuid_string(&u).as_deref(),
            Some("12345678-9abc-def0-0001-020304050607")
        );
        assert_eq!(uuid_string(&[0; 16]), None);
    }
}
