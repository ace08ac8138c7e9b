//! Runs arbitrary bytes, taken as a raw filesystem image, through every
//! reader path an export and an analysis use: open (with the backup
//! superblock fallback), inspect, the block map, and the scrambled and plain
//! exports. The fuzz target (`extfs/fuzz`) and the regression tests call it.

use crate::export::{self, ExportOptions, Identity};
use crate::scramble::{ScrambleKey, ScrambleTransform};
use crate::source::MemSource;
use crate::{analysis, blockmap, Filesystem};
use std::io;
use std::sync::Arc;

/// Exercises every reader path on `data`; returns whether it opened.
pub fn exercise(data: &[u8]) -> bool {
    let Ok(fs) = Filesystem::open(Arc::new(MemSource(data.to_vec()))) else {
        return false;
    };
    let report = analysis::inspect(&fs);
    // Serializing walks every field the JSON output shows.
    let _ = serde_json::to_vec(&report);
    let map = blockmap::build(&fs);
    // A sink that only checks offsets stay inside the filesystem.
    let limit = fs.blocks_count().saturating_mul(fs.block_size());
    let mut sink = |off: u64, data: &[u8]| -> io::Result<()> {
        let end = off.checked_add(data.len() as u64);
        assert!(
            end.is_some_and(|e| e <= limit.max(1024 + 4096)),
            "export wrote past the end of the filesystem: {off:#x}+{}",
            data.len()
        );
        Ok(())
    };
    let mut scramble = ScrambleTransform::new(ScrambleKey::from_bytes([7; 16]), false);
    let _ = export::export(
        &fs,
        &map,
        &mut scramble,
        &mut sink,
        ExportOptions::default(),
    );
    let mut map_text = Vec::new();
    let _ = export::Transform::write_map(&scramble, &mut map_text);
    let _ = export::export(
        &fs,
        &map,
        &mut Identity,
        &mut sink,
        ExportOptions::default(),
    );
    true
}
