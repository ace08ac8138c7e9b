//! The ingest pipeline's work on one image: the structural QCOW2 check, then
//! the filesystem analyses through the QCOW2 reader (never expanding the
//! image), and the index fields derived from them. Also the raw view and
//! the read-only browsing the API serves.
//!
//! Everything here blocks; callers run it on a blocking thread.

use crate::db::IndexFields;
use crate::error::ApiError;
use crate::storage::ImageReader;
use serde_json::Value;

/// Groups per stored result part (paging reads only the parts it needs).
pub const GROUPS_PER_PART: u64 = 1024;

/// Why an image could not be ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The image itself is unusable: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// Storage or another temporary condition: retried with backoff.
    #[error("{0}")]
    Temporary(String),
}

fn qcow2_error(e: qcow2::Error) -> IngestError {
    match e {
        qcow2::Error::Io { .. } => IngestError::Temporary(e.to_string()),
        other => IngestError::Permanent(other.to_string()),
    }
}

/// Everything the pipeline stores for an image.
#[derive(Debug)]
pub struct Analysis {
    /// The QCOW2 check report (JSON text).
    pub check: String,
    /// `superblock` object of `inspect --json` (JSON text).
    pub superblock: String,
    /// `groups` array elements.
    pub groups: Vec<Value>,
    /// `findings` array (JSON text).
    pub findings: String,
    /// Indexed fields.
    pub index: IndexFields,
}

/// The guest view of a stored QCOW2 as an ext block source.
struct QcowSource(qcow2::Image<ImageReader>);

impl extfs::Source for QcowSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset).map_err(|e| match e {
            qcow2::Error::OutOfRange { .. } => {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string())
            }
            other => std::io::Error::other(other.to_string()),
        })
    }
    fn size(&self) -> u64 {
        self.0.virtual_size()
    }
}

/// Opens the ext filesystem inside a stored QCOW2.
fn open_fs(reader: ImageReader) -> Result<extfs::fs::Filesystem, IngestError> {
    let image = qcow2::Image::open(reader).map_err(qcow2_error)?;
    extfs::fs::Filesystem::open(std::sync::Arc::new(QcowSource(image))).map_err(|e| {
        IngestError::Permanent(format!(
            "the image holds no usable ext2/3/4 filesystem: {e}"
        ))
    })
}

/// Checks and analyses a stored image.
pub fn analyze(reader: ImageReader) -> Result<Analysis, IngestError> {
    let report = qcow2::check(reader.clone()).map_err(qcow2_error)?;
    if report.corruptions > 0 {
        let first = report
            .problems
            .iter()
            .find(|p| p.severity == qcow2::check::Severity::Corruption)
            .map(|p| format!("; first at file offset {:#x}: {}", p.offset, p.message))
            .unwrap_or_default();
        return Err(IngestError::Permanent(format!(
            "the QCOW2 structure is corrupt ({} problems{first})",
            report.corruptions
        )));
    }
    let check = json(&report)?;
    let virtual_size = report.virtual_size;
    let fs = open_fs(reader)?;
    let r = extfs::analysis::inspect(&fs);
    let mut index = index_fields(&r);
    index.virtual_size = i64::try_from(virtual_size).ok();
    let groups = r
        .groups
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IngestError::Temporary(e.to_string()))?;
    Ok(Analysis {
        check,
        superblock: json(&r.superblock)?,
        findings: json(&r.findings)?,
        groups,
        index,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, IngestError> {
    serde_json::to_string(v).map_err(|e| IngestError::Temporary(e.to_string()))
}

/// Whether a feature list names any of `names`.
fn has_any(features: &[String], names: &[&str]) -> bool {
    features.iter().any(|f| names.contains(&f.as_str()))
}

/// Index fields from an inspection report.
pub fn index_fields(r: &extfs::analysis::Report) -> IndexFields {
    let sb = &r.superblock;
    let f = &sb.filesystem_features;
    let fs_type = if has_any(
        f,
        &[
            "extent",
            "extents",
            "flex_bg",
            "64bit",
            "huge_file",
            "dir_nlink",
            "extra_isize",
            "metadata_csum",
            "inline_data",
            "uninit_bg",
            "meta_bg",
            "bigalloc",
        ],
    ) {
        "ext4"
    } else if has_any(f, &["has_journal"]) {
        "ext3"
    } else {
        "ext2"
    };
    let journal_state = if !has_any(f, &["has_journal"]) {
        "none".to_string()
    } else if has_any(f, &["needs_recovery"]) {
        "needs recovery".to_string()
    } else if let Some(errno) = sb.journal_errno.filter(|e| *e != 0) {
        format!("aborted (errno {errno})")
    } else {
        "clean".to_string()
    };
    let count =
        |sev: extfs::Severity| r.findings.iter().filter(|x| x.severity == sev).count() as i64;
    IndexFields {
        virtual_size: None,
        fs_uuid: sb.filesystem_uuid.as_ref().map(|u| u.to_ascii_lowercase()),
        label: sb
            .filesystem_volume_name
            .clone()
            .filter(|l| !l.is_empty() && l != "<none>"),
        fs_type: Some(fs_type.into()),
        features: Some(format!(" {} ", f.join(" "))),
        block_size: i64::try_from(sb.block_size).ok(),
        block_count: i64::try_from(sb.block_count).ok(),
        free_blocks: i64::try_from(sb.free_blocks).ok(),
        inode_count: Some(sb.inode_count as i64),
        free_inodes: Some(sb.free_inodes as i64),
        group_count: Some(r.groups.len() as i64),
        state: Some(sb.filesystem_state.clone()),
        error_count: Some(sb.fs_error_count.unwrap_or(0) as i64),
        first_error_function: sb.first_error_function.clone(),
        first_error_line: sb.first_error_line.map(i64::from),
        first_error_time: sb.first_error_time,
        last_error_function: sb.last_error_function.clone(),
        last_error_line: sb.last_error_line.map(i64::from),
        last_error_time: sb.last_error_time,
        journal_state: Some(journal_state),
        findings_errors: Some(count(extfs::Severity::Error)),
        findings_warnings: Some(count(extfs::Severity::Warning)),
    }
}

/// The raw guest view of a stored QCOW2.
pub struct RawView {
    image: qcow2::Image<ImageReader>,
}

impl RawView {
    /// Opens (and validates the header and tables of) a stored image.
    pub fn open(reader: ImageReader) -> Result<RawView, qcow2::Error> {
        Ok(RawView {
            image: qcow2::Image::open(reader)?,
        })
    }
    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.image.virtual_size()
    }
    /// Reads guest bytes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.image
            .read_at(buf, offset)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// What to browse.
#[derive(Debug, Clone, Copy)]
pub enum Browse {
    /// One inode.
    Inode,
    /// A directory's entries.
    Dir,
}

fn file_type_name(t: u8) -> &'static str {
    match t {
        1 => "regular",
        2 => "directory",
        3 => "character device",
        4 => "block device",
        5 => "fifo",
        6 => "socket",
        7 => "symlink",
        _ => "unknown",
    }
}

fn mode_type_name(mode: u16) -> &'static str {
    match mode & 0o170000 {
        0o100000 => "regular",
        0o040000 => "directory",
        0o020000 => "character device",
        0o060000 => "block device",
        0o010000 => "fifo",
        0o140000 => "socket",
        0o120000 => "symlink",
        _ => "unknown",
    }
}

/// One inode or one directory of the filesystem in a stored image.
pub fn browse(reader: ImageReader, ino: u64, what: Browse) -> Result<Value, ApiError> {
    let fs = open_fs(reader).map_err(|e| {
        ApiError::conflict("no_filesystem", format!("cannot browse this image: {e}"))
    })?;
    let ino = u32::try_from(ino).map_err(|_| ApiError::not_found("inode"))?;
    let inode = fs.inode(ino).map_err(|e| match e {
        extfs::fs::Error::Read { source, .. }
            if source.kind() == std::io::ErrorKind::InvalidInput =>
        {
            ApiError::not_found("inode")
        }
        other => ApiError::conflict("unreadable", format!("cannot read inode {ino}: {other}")),
    })?;
    match what {
        Browse::Inode => {
            let mut v = serde_json::to_value(&inode).map_err(ApiError::internal)?;
            if let Value::Object(m) = &mut v {
                m.insert("type".into(), Value::from(mode_type_name(inode.mode)));
                m.insert(
                    "mode_octal".into(),
                    Value::from(format!("{:04o}", inode.mode & 0o7777)),
                );
            }
            Ok(v)
        }
        Browse::Dir => {
            if !inode.is_dir() {
                return Err(ApiError::bad_request(
                    "not_a_directory",
                    format!("inode {ino} is not a directory"),
                ));
            }
            let entries = extfs::dir::read_dir(&fs, ino).map_err(|e| {
                ApiError::conflict("unreadable", format!("cannot read directory {ino}: {e}"))
            })?;
            let list: Vec<Value> = entries
                .iter()
                .filter(|e| e.inode != 0)
                .map(|e| {
                    serde_json::json!({
                        "inode": e.inode,
                        "type": file_type_name(e.file_type),
                        "file_type": e.file_type,
                        "name": String::from_utf8_lossy(&e.name),
                    })
                })
                .collect();
            Ok(serde_json::json!({ "inode": ino, "entries": list }))
        }
    }
}
