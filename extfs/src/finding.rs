use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Damage: e2fsck would repair or complain about this.
    Error,
    /// Suspicious or needs attention (e.g. journal needs recovery).
    Warning,
    /// Worth knowing (e.g. errors the kernel recorded earlier).
    Info,
}

/// One problem found in the metadata.
///
/// `code` is stable across releases (dashboards and ticket systems match on
/// it); `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// Stable machine code, dotted: `"group.checksum"`, `"inode.checksum"`...
    pub code: String,
    /// One sentence for people.
    pub message: String,
    /// Block group concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<u32>,
    /// Inode concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode: Option<u32>,
    /// Block concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub block: Option<u64>,
}
