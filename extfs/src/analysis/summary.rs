//! The superblock summary: what `dumpe2fs -h` prints, as typed fields.
//!
//! JSON keys are the `dumpe2fs -h` labels in snake_case; a key is present
//! exactly when `dumpe2fs -h` prints the line (e2fsprogs 1.47:
//! `lib/e2p/ls.c` `list_super2`, `lib/e2p/ljs.c` `e2p_list_journal_super`,
//! `misc/dumpe2fs.c` `print_mmp_block`). Values keep dumpe2fs' meaning with
//! JSON types: numbers (also those dumpe2fs prints in hex), arrays for word
//! lists, seconds since the epoch for times, `null` for `<none>`/`n/a`.

use crate::fs::Filesystem;
use crate::journal::{self, JournalSuperblock, JBD2_CRC32C_CHKSUM};
use crate::superblock::{
    c_string, compat, encoding_name, errcode_name, errors_behavior_name, hash_name, incompat,
    os_name, ro_compat, state_name, uuid_string, Superblock,
};
use serde::{Deserialize, Serialize};

/// `dumpe2fs -h`, field by field. See the module docs for the conventions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SuperblockSummary {
    /// "Filesystem volume name" (`null` for `<none>`).
    pub filesystem_volume_name: Option<String>,
    /// "Last mounted on" (`null` for `<not available>`).
    pub last_mounted_on: Option<String>,
    /// "Filesystem UUID" (`null` for `<none>`).
    pub filesystem_uuid: Option<String>,
    /// "Filesystem magic number" (0xEF53).
    pub filesystem_magic_number: u16,
    /// "Filesystem revision #".
    pub filesystem_revision: u32,
    /// "Filesystem features".
    pub filesystem_features: Vec<String>,
    /// "Filesystem flags" (only when `s_flags` is non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filesystem_flags: Option<Vec<String>>,
    /// "Default mount options".
    pub default_mount_options: Vec<String>,
    /// "Mount options" (only when set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mount_options: Option<String>,
    /// "Filesystem state": "clean", "not clean", "... with errors".
    pub filesystem_state: String,
    /// "Errors behavior".
    pub errors_behavior: String,
    /// "Filesystem OS type".
    pub filesystem_os_type: String,
    /// "Inode count".
    pub inode_count: u32,
    /// "Block count".
    pub block_count: u64,
    /// "Reserved block count".
    pub reserved_block_count: u64,
    /// "Overhead clusters" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub overhead_clusters: Option<u32>,
    /// "Free blocks" as the superblock records them.
    pub free_blocks: u64,
    /// "Free inodes" as the superblock records them.
    pub free_inodes: u32,
    /// "First block".
    pub first_block: u32,
    /// "Block size".
    pub block_size: u64,
    /// "Cluster size" (bigalloc).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster_size: Option<u64>,
    /// "Fragment size" (without bigalloc).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fragment_size: Option<u64>,
    /// "Group descriptor size" (64bit).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_descriptor_size: Option<u16>,
    /// "Reserved GDT blocks" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reserved_gdt_blocks: Option<u16>,
    /// "Blocks per group".
    pub blocks_per_group: u32,
    /// "Clusters per group" (bigalloc).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clusters_per_group: Option<u32>,
    /// "Fragments per group" (without bigalloc).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fragments_per_group: Option<u32>,
    /// "Inodes per group".
    pub inodes_per_group: u32,
    /// "Inode blocks per group".
    pub inode_blocks_per_group: u64,
    /// "RAID stride" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raid_stride: Option<u16>,
    /// "RAID stripe width" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raid_stripe_width: Option<u32>,
    /// "First meta block group" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_meta_block_group: Option<u32>,
    /// "Flex block group size" (when flex_bg size is set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub flex_block_group_size: Option<u32>,
    /// "Filesystem created" (when set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filesystem_created: Option<i64>,
    /// "Last mount time" (`null` for `n/a`).
    pub last_mount_time: Option<i64>,
    /// "Last write time".
    pub last_write_time: i64,
    /// "Mount count".
    pub mount_count: u16,
    /// "Maximum mount count" (-1: no limit).
    pub maximum_mount_count: i16,
    /// "Last checked".
    pub last_checked: i64,
    /// "Check interval" in seconds.
    pub check_interval: u32,
    /// "Next check after" (when a check interval is set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_check_after: Option<i64>,
    /// "Lifetime writes", in kilobytes (dumpe2fs rounds to kB/MB/GB/TB/PB).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lifetime_writes: Option<u64>,
    /// "Reserved blocks uid".
    pub reserved_blocks_uid: u16,
    /// "Reserved blocks gid".
    pub reserved_blocks_gid: u16,
    /// "First inode" (revision ≥ 1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_inode: Option<u32>,
    /// "Inode size" (revision ≥ 1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode_size: Option<u16>,
    /// "Required extra isize" (revision ≥ 1, non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub required_extra_isize: Option<u16>,
    /// "Desired extra isize" (revision ≥ 1, non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub desired_extra_isize: Option<u16>,
    /// "Journal UUID" (when set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_uuid: Option<String>,
    /// "Journal inode" (when set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_inode: Option<u32>,
    /// "Journal device" (when set; dumpe2fs prints it in hex).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_device: Option<u32>,
    /// "First orphan inode" (head of the orphan list, when set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_orphan_inode: Option<u32>,
    /// "Default directory hash" (with dir_index or a set hash version).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub default_directory_hash: Option<String>,
    /// "Directory Hash Seed" (when non-zero).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub directory_hash_seed: Option<String>,
    /// "Journal backup" ("inode blocks" or "type N").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_backup: Option<String>,
    /// "Backup block groups" (sparse_super2; the non-zero entries).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backup_block_groups: Option<Vec<u32>>,
    /// "Snapshot inode".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_inode: Option<u32>,
    /// "Snapshot ID".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_id: Option<u32>,
    /// "Snapshot reserved blocks".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_reserved_blocks: Option<u64>,
    /// "Snapshot list head".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_list_head: Option<u32>,
    /// "FS Error count" (errors the kernel recorded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fs_error_count: Option<u32>,
    /// "First error time".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_time: Option<i64>,
    /// "First error function".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_function: Option<String>,
    /// "First error line #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_line: Option<u32>,
    /// "First error inode #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_inode: Option<u32>,
    /// "First error block #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_block: Option<u64>,
    /// "First error err" (errno name).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error_err: Option<String>,
    /// "Last error time".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_time: Option<i64>,
    /// "Last error function".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_function: Option<String>,
    /// "Last error line #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_line: Option<u32>,
    /// "Last error inode #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_inode: Option<u32>,
    /// "Last error block #".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_block: Option<u64>,
    /// "Last error err".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error_err: Option<String>,
    /// "MMP block number".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_block_number: Option<u64>,
    /// "MMP update interval".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_update_interval: Option<u16>,
    /// "User quota inode".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_quota_inode: Option<u32>,
    /// "Group quota inode".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_quota_inode: Option<u32>,
    /// "Project quota inode".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project_quota_inode: Option<u32>,
    /// "Checksum type" (metadata_csum).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_type: Option<String>,
    /// "Checksum" (metadata_csum; the stored value).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum: Option<u32>,
    /// "Encryption PW Salt".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub encryption_pw_salt: Option<String>,
    /// "Checksum seed" (metadata_csum_seed).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_seed: Option<u32>,
    /// "Character encoding" (casefold).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub character_encoding: Option<String>,
    /// "Orphan file inode" (orphan_file).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub orphan_file_inode: Option<u32>,

    /// "Journal features".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_features: Option<Vec<String>>,
    /// "Total journal size", in bytes (dumpe2fs prints k or M).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_journal_size: Option<u64>,
    /// "Journal block size" (only when it differs from the fs block size).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_block_size: Option<u32>,
    /// "Total journal blocks".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_journal_blocks: Option<u32>,
    /// "Max transaction length".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_transaction_length: Option<u32>,
    /// "Fast commit length".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fast_commit_length: Option<u32>,
    /// "Journal first block" (only when not 1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_first_block: Option<u32>,
    /// "Journal sequence".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_sequence: Option<u32>,
    /// "Journal start" (0: nothing to replay).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_start: Option<u32>,
    /// "Journal number of users" (only when not 1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_number_of_users: Option<u32>,
    /// "Journal checksum type".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_checksum_type: Option<String>,
    /// "Journal checksum".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_checksum: Option<u32>,
    /// "Journal users".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_users: Option<Vec<String>>,
    /// "Journal errno".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal_errno: Option<i32>,

    /// "mmp_magic" of the MMP block.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_magic: Option<u32>,
    /// "mmp_check_interval".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_check_interval: Option<u16>,
    /// "mmp_sequence".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_sequence: Option<u32>,
    /// "mmp_update_date" (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_update_date: Option<i64>,
    /// "mmp_update_time" (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_update_time: Option<u64>,
    /// "mmp_node_name".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_node_name: Option<String>,
    /// "mmp_device_name".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmp_device_name: Option<String>,
}

/// How a summary value is rendered for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// As is (numbers in decimal, lists space-separated).
    Plain,
    /// Hexadecimal with this many digits.
    Hex(usize),
    /// Upper-case hexadecimal with this many digits.
    HexUpper(usize),
    /// A time (seconds since the epoch) as a UTC date.
    Time,
    /// Bytes, as "N k" / "N M" the way dumpe2fs shows the journal size.
    Size,
    /// Kilobytes, as dumpe2fs' lifetime writes.
    Kilobytes,
}

/// JSON key, `dumpe2fs` label and rendering of every summary field, in
/// `dumpe2fs -h` order.
pub const LABELS: &[(&str, &str, Render)] = &[
    (
        "filesystem_volume_name",
        "Filesystem volume name",
        Render::Plain,
    ),
    ("last_mounted_on", "Last mounted on", Render::Plain),
    ("filesystem_uuid", "Filesystem UUID", Render::Plain),
    (
        "filesystem_magic_number",
        "Filesystem magic number",
        Render::HexUpper(4),
    ),
    (
        "filesystem_revision",
        "Filesystem revision #",
        Render::Plain,
    ),
    ("filesystem_features", "Filesystem features", Render::Plain),
    ("filesystem_flags", "Filesystem flags", Render::Plain),
    (
        "default_mount_options",
        "Default mount options",
        Render::Plain,
    ),
    ("mount_options", "Mount options", Render::Plain),
    ("filesystem_state", "Filesystem state", Render::Plain),
    ("errors_behavior", "Errors behavior", Render::Plain),
    ("filesystem_os_type", "Filesystem OS type", Render::Plain),
    ("inode_count", "Inode count", Render::Plain),
    ("block_count", "Block count", Render::Plain),
    (
        "reserved_block_count",
        "Reserved block count",
        Render::Plain,
    ),
    ("overhead_clusters", "Overhead clusters", Render::Plain),
    ("free_blocks", "Free blocks", Render::Plain),
    ("free_inodes", "Free inodes", Render::Plain),
    ("first_block", "First block", Render::Plain),
    ("block_size", "Block size", Render::Plain),
    ("cluster_size", "Cluster size", Render::Plain),
    ("fragment_size", "Fragment size", Render::Plain),
    (
        "group_descriptor_size",
        "Group descriptor size",
        Render::Plain,
    ),
    ("reserved_gdt_blocks", "Reserved GDT blocks", Render::Plain),
    ("blocks_per_group", "Blocks per group", Render::Plain),
    ("clusters_per_group", "Clusters per group", Render::Plain),
    ("fragments_per_group", "Fragments per group", Render::Plain),
    ("inodes_per_group", "Inodes per group", Render::Plain),
    (
        "inode_blocks_per_group",
        "Inode blocks per group",
        Render::Plain,
    ),
    ("raid_stride", "RAID stride", Render::Plain),
    ("raid_stripe_width", "RAID stripe width", Render::Plain),
    (
        "first_meta_block_group",
        "First meta block group",
        Render::Plain,
    ),
    (
        "flex_block_group_size",
        "Flex block group size",
        Render::Plain,
    ),
    ("filesystem_created", "Filesystem created", Render::Time),
    ("last_mount_time", "Last mount time", Render::Time),
    ("last_write_time", "Last write time", Render::Time),
    ("mount_count", "Mount count", Render::Plain),
    ("maximum_mount_count", "Maximum mount count", Render::Plain),
    ("last_checked", "Last checked", Render::Time),
    ("check_interval", "Check interval", Render::Plain),
    ("next_check_after", "Next check after", Render::Time),
    ("lifetime_writes", "Lifetime writes", Render::Kilobytes),
    ("reserved_blocks_uid", "Reserved blocks uid", Render::Plain),
    ("reserved_blocks_gid", "Reserved blocks gid", Render::Plain),
    ("first_inode", "First inode", Render::Plain),
    ("inode_size", "Inode size", Render::Plain),
    (
        "required_extra_isize",
        "Required extra isize",
        Render::Plain,
    ),
    ("desired_extra_isize", "Desired extra isize", Render::Plain),
    ("journal_uuid", "Journal UUID", Render::Plain),
    ("journal_inode", "Journal inode", Render::Plain),
    ("journal_device", "Journal device", Render::Hex(4)),
    ("first_orphan_inode", "First orphan inode", Render::Plain),
    (
        "default_directory_hash",
        "Default directory hash",
        Render::Plain,
    ),
    ("directory_hash_seed", "Directory Hash Seed", Render::Plain),
    ("journal_backup", "Journal backup", Render::Plain),
    ("backup_block_groups", "Backup block groups", Render::Plain),
    ("snapshot_inode", "Snapshot inode", Render::Plain),
    ("snapshot_id", "Snapshot ID", Render::Plain),
    (
        "snapshot_reserved_blocks",
        "Snapshot reserved blocks",
        Render::Plain,
    ),
    ("snapshot_list_head", "Snapshot list head", Render::Plain),
    ("fs_error_count", "FS Error count", Render::Plain),
    ("first_error_time", "First error time", Render::Time),
    (
        "first_error_function",
        "First error function",
        Render::Plain,
    ),
    ("first_error_line", "First error line #", Render::Plain),
    ("first_error_inode", "First error inode #", Render::Plain),
    ("first_error_block", "First error block #", Render::Plain),
    ("first_error_err", "First error err", Render::Plain),
    ("last_error_time", "Last error time", Render::Time),
    ("last_error_function", "Last error function", Render::Plain),
    ("last_error_line", "Last error line #", Render::Plain),
    ("last_error_inode", "Last error inode #", Render::Plain),
    ("last_error_block", "Last error block #", Render::Plain),
    ("last_error_err", "Last error err", Render::Plain),
    ("mmp_block_number", "MMP block number", Render::Plain),
    ("mmp_update_interval", "MMP update interval", Render::Plain),
    ("user_quota_inode", "User quota inode", Render::Plain),
    ("group_quota_inode", "Group quota inode", Render::Plain),
    ("project_quota_inode", "Project quota inode", Render::Plain),
    ("checksum_type", "Checksum type", Render::Plain),
    ("checksum", "Checksum", Render::Hex(8)),
    ("encryption_pw_salt", "Encryption PW Salt", Render::Plain),
    ("checksum_seed", "Checksum seed", Render::Hex(8)),
    ("character_encoding", "Character encoding", Render::Plain),
    ("orphan_file_inode", "Orphan file inode", Render::Plain),
    ("journal_features", "Journal features", Render::Plain),
    ("total_journal_size", "Total journal size", Render::Size),
    ("journal_block_size", "Journal block size", Render::Plain),
    (
        "total_journal_blocks",
        "Total journal blocks",
        Render::Plain,
    ),
    (
        "max_transaction_length",
        "Max transaction length",
        Render::Plain,
    ),
    ("fast_commit_length", "Fast commit length", Render::Plain),
    ("journal_first_block", "Journal first block", Render::Plain),
    ("journal_sequence", "Journal sequence", Render::Hex(8)),
    ("journal_start", "Journal start", Render::Plain),
    (
        "journal_number_of_users",
        "Journal number of users",
        Render::Plain,
    ),
    (
        "journal_checksum_type",
        "Journal checksum type",
        Render::Plain,
    ),
    ("journal_checksum", "Journal checksum", Render::Hex(8)),
    ("journal_users", "Journal users", Render::Plain),
    ("journal_errno", "Journal errno", Render::Plain),
    ("mmp_magic", "mmp_magic", Render::Hex(0)),
    ("mmp_check_interval", "mmp_check_interval", Render::Plain),
    ("mmp_sequence", "mmp_sequence", Render::Hex(8)),
    ("mmp_update_date", "mmp_update_date", Render::Time),
    ("mmp_update_time", "mmp_update_time", Render::Plain),
    ("mmp_node_name", "mmp_node_name", Render::Plain),
    ("mmp_device_name", "mmp_device_name", Render::Plain),
];

/// MMP block magic ("MMP" little-endian).
pub const MMP_MAGIC: u32 = 0x004D_4D50;
/// Offset of `mmp_checksum` in the MMP block (end of the checksummed range).
pub const MMP_CHECKSUM_OFFSET: usize = 1020;

/// The MMP block (`struct mmp_struct`, little-endian), as far as dumpe2fs
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmpBlock {
    /// 0x00 `mmp_magic`.
    pub magic: u32,
    /// 0x04 `mmp_seq`.
    pub seq: u32,
    /// 0x08 `mmp_time`.
    pub time: u64,
    /// 0x10 `mmp_nodename[64]`.
    pub nodename: String,
    /// 0x50 `mmp_bdevname[32]`.
    pub bdevname: String,
    /// 0x70 `mmp_check_interval`.
    pub check_interval: u16,
    /// 0x3FC `mmp_checksum`.
    pub checksum: u32,
    /// crc32c(csum seed) of bytes 0..0x3FC.
    pub computed_checksum: u32,
}

/// Reads and decodes the MMP block, if the feature is on and the block number
/// lies inside the filesystem.
pub fn read_mmp(fs: &Filesystem) -> Option<Result<MmpBlock, String>> {
    let sb = fs.superblock();
    if !sb.has_incompat(incompat::MMP) || sb.mmp_block == 0 {
        return None;
    }
    let blk = sb.mmp_block;
    if blk <= u64::from(sb.first_data_block) || blk >= fs.blocks_count() {
        return Some(Err(format!("MMP block {blk} lies outside the filesystem")));
    }
    let b = match fs.read_block(blk) {
        Ok(b) => b,
        Err(e) => return Some(Err(format!("MMP block {blk} cannot be read: {e}"))),
    };
    let le32 = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .unwrap_or(0)
    };
    let computed = b
        .get(..MMP_CHECKSUM_OFFSET)
        .map(|s| crate::checksum::crc32c(fs.csum_seed(), s))
        .unwrap_or(0);
    Some(Ok(MmpBlock {
        magic: le32(0),
        seq: le32(4),
        time: u64::from(le32(8)) | (u64::from(le32(12)) << 32),
        nodename: c_string(b.get(0x10..0x50).unwrap_or(&[])),
        bdevname: c_string(b.get(0x50..0x70).unwrap_or(&[])),
        check_interval: b
            .get(0x70..0x72)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
            .unwrap_or(0),
        checksum: le32(MMP_CHECKSUM_OFFSET),
        computed_checksum: computed,
    }))
}

/// Whether `dumpe2fs` would print the MMP block: readable, right magic and
/// (with metadata_csum) right checksum, like `ext2fs_mmp_read`.
fn mmp_printable(fs: &Filesystem, m: &MmpBlock) -> bool {
    m.magic == MMP_MAGIC && (!fs.has_metadata_csum() || m.checksum == m.computed_checksum)
}

fn nz<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// The superblock summary of `fs` (see [`SuperblockSummary`]).
pub fn superblock_summary(fs: &Filesystem) -> SuperblockSummary {
    let sb = fs.superblock();
    let mut s = base_summary(sb);
    if sb.has_incompat(incompat::JOURNAL_DEV)
        || (sb.has_compat(compat::HAS_JOURNAL) && sb.journal_inum != 0)
    {
        if let Ok((j, _)) = journal::read_superblock(fs) {
            let ok = if sb.has_incompat(incompat::JOURNAL_DEV) {
                j.magic_ok() && j.blocktype == journal::SUPERBLOCK_V2
            } else {
                j.magic_ok()
            };
            if ok {
                add_journal(
                    &mut s,
                    &j,
                    fs.block_size(),
                    sb.has_compat(compat::FAST_COMMIT),
                );
            }
        }
    }
    if !sb.has_incompat(incompat::JOURNAL_DEV) {
        if let Some(Ok(m)) = read_mmp(fs) {
            if mmp_printable(fs, &m) {
                s.mmp_magic = Some(m.magic);
                s.mmp_check_interval = Some(m.check_interval);
                s.mmp_sequence = Some(m.seq);
                s.mmp_update_date = Some(m.time as i64);
                s.mmp_update_time = Some(m.time);
                s.mmp_node_name = Some(m.nodename);
                s.mmp_device_name = Some(m.bdevname);
            }
        }
    }
    s
}

/// The fields `list_super2` prints, from the superblock alone.
pub fn base_summary(sb: &Superblock) -> SuperblockSummary {
    let bigalloc = sb.has_ro_compat(ro_compat::BIGALLOC);
    let bs = sb.block_size().unwrap_or(0);
    let cs = sb.cluster_size().unwrap_or(0);
    let dynamic = sb.rev_level >= 1;
    let isz = u64::from(sb.inode_size());
    let ibpg = if bs == 0 {
        0
    } else {
        (u64::from(sb.inodes_per_group) * isz).div_ceil(bs)
    };
    let first_error = sb.first_error_time != 0 || sb.first_error_time_hi != 0;
    let last_error = sb.last_error_time != 0 || sb.last_error_time_hi != 0;
    SuperblockSummary {
        filesystem_volume_name: nz(c_string(&sb.volume_name)),
        last_mounted_on: nz(c_string(&sb.last_mounted)),
        filesystem_uuid: uuid_string(&sb.uuid),
        filesystem_magic_number: sb.magic,
        filesystem_revision: sb.rev_level,
        filesystem_features: sb.feature_names(),
        filesystem_flags: (sb.flags != 0).then(|| sb.flag_names()),
        default_mount_options: sb.default_mount_option_names(),
        mount_options: nz(c_string(&sb.mount_opts)),
        filesystem_state: state_name(sb.state),
        errors_behavior: errors_behavior_name(sb.errors).to_string(),
        filesystem_os_type: os_name(sb.creator_os).to_string(),
        inode_count: sb.inodes_count,
        block_count: sb.blocks_count(),
        reserved_block_count: sb.r_blocks_count(),
        overhead_clusters: nz(sb.overhead_clusters),
        free_blocks: sb.free_blocks_count(),
        free_inodes: sb.free_inodes_count,
        first_block: sb.first_data_block,
        block_size: bs,
        cluster_size: bigalloc.then_some(cs),
        fragment_size: (!bigalloc).then_some(cs),
        group_descriptor_size: sb.is_64bit().then_some(sb.desc_size),
        reserved_gdt_blocks: nz(sb.reserved_gdt_blocks),
        blocks_per_group: sb.blocks_per_group,
        clusters_per_group: bigalloc.then_some(sb.clusters_per_group),
        fragments_per_group: (!bigalloc).then_some(sb.clusters_per_group),
        inodes_per_group: sb.inodes_per_group,
        inode_blocks_per_group: ibpg,
        raid_stride: nz(sb.raid_stride),
        raid_stripe_width: nz(sb.raid_stripe_width),
        first_meta_block_group: nz(sb.first_meta_bg),
        flex_block_group_size: (sb.log_groups_per_flex != 0).then(|| {
            1u32.checked_shl(u32::from(sb.log_groups_per_flex))
                .unwrap_or(0)
        }),
        filesystem_created: (sb.mkfs_time != 0 || sb.mkfs_time_hi != 0)
            .then(|| sb.mkfs_time_full()),
        last_mount_time: (sb.mtime != 0 || sb.mtime_hi != 0).then(|| sb.mtime_full()),
        last_write_time: sb.wtime_full(),
        mount_count: sb.mnt_count,
        maximum_mount_count: sb.max_mnt_count,
        last_checked: sb.lastcheck_full(),
        check_interval: sb.checkinterval,
        next_check_after: (sb.checkinterval != 0)
            .then(|| sb.lastcheck_full() + i64::from(sb.checkinterval)),
        lifetime_writes: nz(sb.kbytes_written),
        reserved_blocks_uid: sb.def_resuid,
        reserved_blocks_gid: sb.def_resgid,
        first_inode: dynamic.then_some(sb.first_ino),
        inode_size: dynamic.then_some(sb.inode_size),
        required_extra_isize: if dynamic {
            nz(sb.min_extra_isize)
        } else {
            None
        },
        desired_extra_isize: if dynamic {
            nz(sb.want_extra_isize)
        } else {
            None
        },
        journal_uuid: uuid_string(&sb.journal_uuid),
        journal_inode: nz(sb.journal_inum),
        journal_device: nz(sb.journal_dev),
        first_orphan_inode: nz(sb.last_orphan),
        default_directory_hash: (sb.has_compat(compat::DIR_INDEX) || sb.def_hash_version != 0)
            .then(|| hash_name(sb.def_hash_version)),
        directory_hash_seed: uuid_string(&sb.hash_seed),
        journal_backup: match sb.jnl_backup_type {
            0 => None,
            1 => Some("inode blocks".into()),
            t => Some(format!("type {t}")),
        },
        backup_block_groups: (sb.backup_bgs[0] != 0 || sb.backup_bgs[1] != 0)
            .then(|| sb.backup_bgs.iter().copied().filter(|&g| g != 0).collect()),
        snapshot_inode: nz(sb.snapshot_inum),
        snapshot_id: (sb.snapshot_inum != 0).then_some(sb.snapshot_id),
        snapshot_reserved_blocks: (sb.snapshot_inum != 0).then_some(sb.snapshot_r_blocks_count),
        snapshot_list_head: nz(sb.snapshot_list),
        fs_error_count: nz(sb.error_count),
        first_error_time: first_error.then(|| sb.first_error_time_full()),
        first_error_function: first_error.then(|| c_string(&sb.first_error_func)),
        first_error_line: first_error.then_some(sb.first_error_line),
        first_error_inode: if first_error {
            nz(sb.first_error_ino)
        } else {
            None
        },
        first_error_block: if first_error {
            nz(sb.first_error_block)
        } else {
            None
        },
        first_error_err: if first_error && sb.first_error_errcode != 0 {
            Some(errcode_name(sb.first_error_errcode))
        } else {
            None
        },
        last_error_time: last_error.then(|| sb.last_error_time_full()),
        last_error_function: last_error.then(|| c_string(&sb.last_error_func)),
        last_error_line: last_error.then_some(sb.last_error_line),
        last_error_inode: if last_error {
            nz(sb.last_error_ino)
        } else {
            None
        },
        last_error_block: if last_error {
            nz(sb.last_error_block)
        } else {
            None
        },
        last_error_err: if last_error && sb.last_error_errcode != 0 {
            Some(errcode_name(sb.last_error_errcode))
        } else {
            None
        },
        mmp_block_number: sb.has_incompat(incompat::MMP).then_some(sb.mmp_block),
        mmp_update_interval: sb
            .has_incompat(incompat::MMP)
            .then_some(sb.mmp_update_interval),
        user_quota_inode: nz(sb.usr_quota_inum),
        group_quota_inode: nz(sb.grp_quota_inum),
        project_quota_inode: nz(sb.prj_quota_inum),
        checksum_type: sb.has_ro_compat(ro_compat::METADATA_CSUM).then(|| {
            if sb.checksum_type == crate::superblock::CRC32C_CHKSUM {
                "crc32c".to_string()
            } else {
                "unknown".to_string()
            }
        }),
        checksum: sb
            .has_ro_compat(ro_compat::METADATA_CSUM)
            .then_some(sb.checksum),
        encryption_pw_salt: uuid_string(&sb.encrypt_pw_salt),
        checksum_seed: sb
            .has_incompat(incompat::CSUM_SEED)
            .then_some(sb.checksum_seed),
        character_encoding: sb
            .has_incompat(incompat::CASEFOLD)
            .then(|| encoding_name(sb.encoding)),
        orphan_file_inode: sb
            .has_compat(compat::ORPHAN_FILE)
            .then_some(sb.orphan_file_inum),
        ..SuperblockSummary::default()
    }
}

/// The fields `e2p_list_journal_super` prints.
fn add_journal(
    s: &mut SuperblockSummary,
    j: &JournalSuperblock,
    fs_block_size: u64,
    fast_commit: bool,
) {
    let fc = j.fast_commit_blocks(fast_commit);
    let journal_blks = j.maxlen.wrapping_sub(fc);
    s.journal_features = Some(j.feature_names());
    s.total_journal_size = Some(u64::from(j.blocksize) * u64::from(j.maxlen));
    if u64::from(j.blocksize) != fs_block_size {
        s.journal_block_size = Some(j.blocksize);
    }
    s.total_journal_blocks = Some(journal_blks.wrapping_add(fc));
    s.max_transaction_length = Some(journal_blks);
    s.fast_commit_length = Some(fc);
    if j.first != 1 {
        s.journal_first_block = Some(j.first);
    }
    s.journal_sequence = Some(j.sequence);
    s.journal_start = Some(j.start);
    if j.nr_users != 1 {
        s.journal_number_of_users = Some(j.nr_users);
    }
    if j.feature_compat & journal::FEATURE_COMPAT_CHECKSUM != 0 {
        s.journal_checksum_type = Some("crc32".into());
    }
    if j.has_csum_v2v3() {
        s.journal_checksum_type = Some(if j.checksum_type == JBD2_CRC32C_CHKSUM {
            "crc32c".into()
        } else {
            "unknown".into()
        });
        s.journal_checksum = Some(j.checksum);
    }
    let users = j.user_strings();
    if !users.is_empty() {
        s.journal_users = Some(users);
    }
    if j.errno != 0 {
        s.journal_errno = Some(j.errno);
    }
}

impl SuperblockSummary {
    /// `(label, value)` lines as `dumpe2fs -h` shows them, for people.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let v = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        for (key, label, render) in LABELS {
            let Some(val) = v.get(*key) else { continue };
            out.push((*label, render_value(key, val, *render)));
        }
        out
    }
}

fn render_value(key: &str, v: &serde_json::Value, r: Render) -> String {
    use serde_json::Value;
    match v {
        Value::Null => match key {
            "last_mounted_on" => "<not available>".into(),
            "last_mount_time" => "n/a".into(),
            _ => "<none>".into(),
        },
        Value::Array(a) if a.is_empty() => "(none)".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| render_value(key, x, r))
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let Some(i) = n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)) else {
                return n.to_string();
            };
            match r {
                Render::Plain => match key {
                    "filesystem_revision" => format!(
                        "{i} ({})",
                        match i {
                            0 => "original",
                            1 => "dynamic",
                            _ => "unknown",
                        }
                    ),
                    "check_interval" => format!("{i} ({})", interval_string(i)),
                    _ => n.to_string(),
                },
                Render::HexUpper(w) => format!("0x{:0w$X}", i, w = w),
                Render::Hex(0) => format!("{i:#x}"),
                Render::Hex(w) => format!("0x{:0w$x}", i, w = w),
                Render::Time => format_time(i),
                Render::Size => {
                    let k = i / 1024;
                    if k < 8192 {
                        format!("{k}k")
                    } else {
                        format!("{}M", k >> 10)
                    }
                }
                Render::Kilobytes => format_kbytes(i as u64),
            }
        }
        Value::Bool(b) => b.to_string(),
        Value::Object(_) => v.to_string(),
    }
}

/// A check interval as dumpe2fs words it ("1 month, 2 weeks, 1:00:00").
fn interval_string(secs: i64) -> String {
    const MONTH: i64 = 86_400 * 30;
    const WEEK: i64 = 86_400 * 7;
    const DAY: i64 = 86_400;
    if secs <= 0 {
        return "<none>".into();
    }
    let mut s = secs;
    let mut parts = Vec::new();
    for (unit, name) in [(MONTH, "month"), (WEEK, "week"), (DAY, "day")] {
        if s >= unit {
            let n = s / unit;
            s -= n * unit;
            parts.push(format!("{n} {name}{}", if n > 1 { "s" } else { "" }));
        }
    }
    if s > 0 {
        parts.push(format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60));
    }
    parts.join(", ")
}

/// Lifetime writes the way dumpe2fs rounds them.
fn format_kbytes(k: u64) -> String {
    if k < 1 << 13 {
        format!("{k} kB")
    } else if k < 1 << 23 {
        format!("{} MB", (k + (1 << 9)) >> 10)
    } else if k < 1 << 33 {
        format!("{} GB", (k + (1 << 19)) >> 20)
    } else if k < 1 << 43 {
        format!("{} TB", (k + (1 << 29)) >> 30)
    } else {
        format!("{} PB", (k + (1 << 39)) >> 40)
    }
}

/// Seconds since the epoch as `ctime` prints them in UTC
/// ("Thu Jan  1 00:00:00 1970").
pub fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = WD[days.rem_euclid(7) as usize];
    let mo = MO[(m - 1).clamp(0, 11) as usize];
    format!(
        "{wd} {mo} {d:>2} {:02}:{:02}:{:02} {y}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_format() {
        assert_eq!(format_time(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(format_time(1_764_080_632), "Tue Nov 25 14:23:52 2025");
        assert_eq!(format_time(951_782_400), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn every_field_has_a_label() {
        let mut s = base_summary(&Superblock::parse(&[0u8; 1024]));
        // Fill every optional so every key serialises.
        s.filesystem_flags = Some(vec![]);
        let v = serde_json::to_value(&s).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(
                LABELS.iter().any(|(key, _, _)| key == k),
                "{k} has no label"
            );
        }
        let mut keys: Vec<_> = LABELS.iter().map(|l| l.0).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), LABELS.len());
    }

    #[test]
    fn lifetime_writes_rounding() {
        assert_eq!(format_kbytes(100), "100 kB");
        assert_eq!(format_kbytes(10_000), "10 MB");
        assert_eq!(format_kbytes(1 << 33), "8 TB");
    }
}
