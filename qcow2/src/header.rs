//! The image header (cluster 0) and its extensions.
//!
//! Layout (big endian), from qemu's docs/interop/qcow2.txt:
//!
//! | bytes   | field                    |
//! |---------|--------------------------|
//! | 0..4    | magic `QFI\xfb`          |
//! | 4..8    | version (2 or 3)         |
//! | 8..16   | backing_file_offset      |
//! | 16..20  | backing_file_size        |
//! | 20..24  | cluster_bits             |
//! | 24..32  | size (virtual)           |
//! | 32..36  | crypt_method             |
//! | 36..40  | l1_size                  |
//! | 40..48  | l1_table_offset          |
//! | 48..56  | refcount_table_offset    |
//! | 56..60  | refcount_table_clusters  |
//! | 60..64  | nb_snapshots             |
//! | 64..72  | snapshots_offset         |
//! | 72..80  | incompatible_features (v3) |
//! | 80..88  | compatible_features (v3) |
//! | 88..96  | autoclear_features (v3)  |
//! | 96..100 | refcount_order (v3)      |
//! | 100..104| header_length (v3)       |
//! | 104     | compression_type (v3, if header_length > 104) |
//!
//! Header extensions follow at `header_length`: `type: u32, len: u32, data`,
//! padded to 8 bytes, ended by type 0.

use crate::error::{Error, Result};
use crate::ReadAt;

/// The magic at offset 0.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Minimum length of a version 3 header.
pub const V3_HEADER_LEN: u32 = 104;
/// Smallest cluster_bits (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits qemu accepts (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's limit on the L1 table (32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the refcount table (8 MiB).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name qemu allows.
const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image was marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: 128-bit L2 entries with subclusters.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const KNOWN_INCOMPAT: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    /// Raw deflate (qemu's "zlib"), type 0.
    Zlib,
    /// Zstandard, type 1.
    Zstd,
}

/// A parsed, validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// File offset of the active L1 table.
    pub l1_table_offset: u64,
    /// File offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// File offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 for v2).
    pub compatible_features: u64,
    /// Autoclear feature bits (0 for v2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the header structure (72 for v2).
    pub header_length: u32,
    /// Compression of compressed clusters.
    pub compression_type: CompressionType,
    /// Header extensions found, as `(type, file offset of data, length)`.
    pub extensions: Vec<(u32, u64, u32)>,
    /// Bitmaps extension: `(nb_bitmaps, directory_size, directory_offset)`.
    pub bitmaps: Option<(u32, u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

/// Whether `first_bytes` start with the QCOW2 magic (content detection).
pub fn is_qcow2(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 8 && first_bytes[..4] == MAGIC && matches!(be32(first_bytes, 4), 2 | 3)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128 bits with subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry (8, or 16 with extended L2 entries).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// log2 of the number of entries in an L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.extended_l2() { 4 } else { 3 }
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Reads and validates the header of `storage`.
    pub fn read<R: ReadAt + ?Sized>(storage: &R) -> Result<Header> {
        let file_size = storage
            .size()
            .map_err(|e| Error::io("getting the image size", e))?;
        if file_size < 8 {
            let mut b = vec![0u8; file_size as usize];
            storage
                .read_exact_at(&mut b, 0)
                .map_err(|e| Error::io("reading the header", e))?;
            if b.len() < 4 || b[..4] != MAGIC {
                return Err(Error::NotQcow2);
            }
            return Err(trunc("header", 0, file_size));
        }
        let mut first = [0u8; 8];
        read(storage, &mut first, 0, "header")?;
        if first[..4] != MAGIC {
            return Err(Error::NotQcow2);
        }
        let version = be32(&first, 4);
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion(version));
        }
        let fixed = if version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN
        } as u64;
        if file_size < fixed {
            return Err(trunc("header", 0, file_size));
        }
        let mut h = [0u8; V3_HEADER_LEN as usize];
        read(storage, &mut h[..fixed as usize], 0, "header")?;

        let cluster_bits = be32(&h, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::corrupt(
                20,
                format!("cluster_bits {cluster_bits} is outside 9..=21"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut hdr = Header {
            version,
            cluster_bits,
            size: be64(&h, 24),
            l1_size: be32(&h, 36),
            l1_table_offset: be64(&h, 40),
            refcount_table_offset: be64(&h, 48),
            refcount_table_clusters: be32(&h, 56),
            nb_snapshots: be32(&h, 60),
            snapshots_offset: be64(&h, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: CompressionType::Zlib,
            extensions: Vec::new(),
            bitmaps: None,
        };
        if version == 3 {
            hdr.incompatible_features = be64(&h, 72);
            hdr.compatible_features = be64(&h, 80);
            hdr.autoclear_features = be64(&h, 88);
            hdr.refcount_order = be32(&h, 96);
            hdr.header_length = be32(&h, 100);
            if hdr.refcount_order > 6 {
                return Err(Error::corrupt(
                    96,
                    format!("refcount_order {} is above 6", hdr.refcount_order),
                ));
            }
            if hdr.header_length < V3_HEADER_LEN
                || hdr.header_length % 8 != 0
                || u64::from(hdr.header_length) > cluster_size
            {
                return Err(Error::corrupt(
                    100,
                    format!(
                        "header_length {} is not a multiple of 8 between 104 and the cluster size",
                        hdr.header_length
                    ),
                ));
            }
            if u64::from(hdr.header_length) > file_size {
                return Err(trunc("header", 0, file_size));
            }
            if hdr.header_length > V3_HEADER_LEN {
                let mut ct = [0u8; 1];
                read(storage, &mut ct, 104, "compression_type")?;
                hdr.compression_type = match ct[0] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    other => {
                        return Err(Error::Unsupported(format!(
                        "compression_type {other} at offset 104 (only 0 = zlib and 1 = zstd exist)"
                    )))
                    }
                };
            }
            let has_bit = hdr.incompatible_features & INCOMPAT_COMPRESSION != 0;
            if has_bit != (hdr.compression_type != CompressionType::Zlib) {
                return Err(Error::corrupt(
                    72,
                    "the compression type feature bit disagrees with the compression_type field",
                ));
            }
        }

        // The header extensions live in the rest of cluster 0.
        let ext_end = cluster_size.min(file_size);
        let mut feature_names: Vec<(u8, u8, String)> = Vec::new();
        let mut pos = u64::from(hdr.header_length);
        let mut data_file_name = None;
        let mut has_crypto_ext = false;
        while pos + 8 <= ext_end {
            let mut eh = [0u8; 8];
            read(storage, &mut eh, pos, "header extension")?;
            let ty = be32(&eh, 0);
            let len = be32(&eh, 4);
            if ty == EXT_END {
                break;
            }
            let data_at = pos + 8;
            let padded = (u64::from(len) + 7) & !7;
            if data_at + u64::from(len) > cluster_size {
                return Err(Error::corrupt(
                    pos,
                    format!(
                        "header extension {ty:#010x} of {len} bytes runs past the first cluster"
                    ),
                ));
            }
            if data_at + u64::from(len) > file_size {
                return Err(trunc("header extension", pos, file_size));
            }
            hdr.extensions.push((ty, data_at, len));
            match ty {
                EXT_FEATURE_NAMES => {
                    let mut d = vec![0u8; len as usize];
                    read(storage, &mut d, data_at, "feature name table")?;
                    for e in d.chunks_exact(48) {
                        let name_bytes = &e[2..];
                        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
                        feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_DATA_FILE => {
                    let mut d = vec![0u8; len as usize];
                    read(storage, &mut d, data_at, "external data file name")?;
                    data_file_name = Some(String::from_utf8_lossy(&d).into_owned());
                }
                EXT_CRYPTO => has_crypto_ext = true,
                EXT_BITMAPS if len >= 24 => {
                    let mut d = [0u8; 24];
                    read(storage, &mut d, data_at, "bitmaps extension")?;
                    hdr.bitmaps = Some((be32(&d, 0), be64(&d, 8), be64(&d, 16)));
                }
                _ => {}
            }
            pos = data_at + padded;
        }

        // Refuse what we cannot read correctly, naming the feature.
        let crypt = be32(&h, 32);
        if crypt != 0 || has_crypto_ext {
            let what = match crypt {
                1 => "AES".to_string(),
                2 => "LUKS".to_string(),
                n => format!("method {n}"),
            };
            return Err(Error::Unsupported(format!(
                "encryption ({what}, crypt_method at offset 32); decrypt it with qemu-img first"
            )));
        }
        let backing_offset = be64(&h, 8);
        if backing_offset != 0 {
            let len = be32(&h, 16).min(MAX_BACKING_NAME);
            let mut name = String::from("(unreadable name)");
            if backing_offset
                .checked_add(u64::from(len))
                .is_some_and(|e| e <= file_size)
            {
                let mut d = vec![0u8; len as usize];
                if storage.read_exact_at(&mut d, backing_offset).is_ok() {
                    name = format!("\"{}\"", String::from_utf8_lossy(&d));
                }
            }
            return Err(Error::Unsupported(format!(
                "backing file {name} (the image is an overlay; flatten it with `qemu-img convert` first)"
            )));
        }
        if hdr.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            let name = data_file_name
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default();
            return Err(Error::Unsupported(format!(
                "external data file{name} (incompatible feature bit 2)"
            )));
        }
        let unknown = hdr.incompatible_features & !KNOWN_INCOMPAT;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let name = feature_names
                .iter()
                .find(|(t, b, _)| *t == 0 && u32::from(*b) == bit)
                .map(|(_, _, n)| format!(" \"{n}\""))
                .unwrap_or_default();
            return Err(Error::Unsupported(format!(
                "unknown incompatible feature{name} (bit {bit} of incompatible_features at offset 72)"
            )));
        }
        if hdr.extended_l2() && cluster_bits < 14 {
            return Err(Error::corrupt(
                20,
                format!("extended L2 entries need clusters of at least 16 KiB, cluster_bits is {cluster_bits}"),
            ));
        }

        // Tables: aligned, bounded, inside the file.
        let l1_bytes = u64::from(hdr.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::corrupt(
                36,
                format!("l1_size {} exceeds the 32 MiB L1 table limit", hdr.l1_size),
            ));
        }
        let l1_entries_needed = l1_entries_for(hdr.size, cluster_bits, hdr.l2_bits());
        if u64::from(hdr.l1_size) < l1_entries_needed {
            return Err(Error::corrupt(
                36,
                format!(
                    "l1_size {} is too small for a virtual size of {} bytes (needs {l1_entries_needed})",
                    hdr.l1_size, hdr.size
                ),
            ));
        }
        if hdr.l1_size > 0 {
            check_table(
                hdr.l1_table_offset,
                l1_bytes,
                cluster_size,
                file_size,
                "L1 table",
                40,
            )?;
        }
        let rt_bytes = u64::from(hdr.refcount_table_clusters) * cluster_size;
        if rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::corrupt(
                56,
                format!(
                    "refcount_table_clusters {} exceeds the 8 MiB refcount table limit",
                    hdr.refcount_table_clusters
                ),
            ));
        }
        if hdr.refcount_table_offset % cluster_size != 0 {
            return Err(Error::corrupt(
                48,
                format!(
                    "refcount table offset {:#x} is not cluster aligned",
                    hdr.refcount_table_offset
                ),
            ));
        }
        Ok(hdr)
    }
}

/// L1 entries needed to map `size` guest bytes.
pub(crate) fn l1_entries_for(size: u64, cluster_bits: u32, l2_bits: u32) -> u64 {
    let shift = cluster_bits + l2_bits;
    // size / 2^shift rounded up, without overflow.
    (size >> shift) + u64::from(size & ((1u64 << shift) - 1) != 0)
}

/// Validates a table's offset (aligned) and extent (inside the file).
pub(crate) fn check_table(
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_size: u64,
    what: &str,
    field_at: u64,
) -> Result<()> {
    if offset % cluster_size != 0 || offset == 0 {
        return Err(Error::corrupt(
            field_at,
            format!("{what} offset {offset:#x} is not a cluster-aligned offset after the header"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(trunc(what, offset, file_size)),
    }
}

pub(crate) fn trunc(what: &str, offset: u64, file_size: u64) -> Error {
    Error::Truncated {
        what: what.to_string(),
        offset,
        file_size,
    }
}

/// `read_exact_at` with a typed error naming the structure; a short file is
/// reported as truncation, not I/O failure.
pub(crate) fn read<R: ReadAt + ?Sized>(
    storage: &R,
    buf: &mut [u8],
    offset: u64,
    what: &str,
) -> Result<()> {
    storage.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                what: what.to_string(),
                offset,
                file_size: storage.size().unwrap_or(0),
            }
        } else {
            Error::io(format!("reading the {what} at offset {offset:#x}"), e)
        }
    })
}
