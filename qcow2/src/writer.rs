//! The streaming writer.
//!
//! # Layout and streaming contract
//!
//! Cluster 0 (the header) is reserved when the writer starts and written
//! last, by [`Writer::finish`]. Every other byte goes to a file offset beyond
//! everything emitted before, with no gaps (padding is written as zeros):
//!
//! 1. data clusters as they complete (compressed clusters are packed back to
//!    back at byte granularity, plain clusters and tables are cluster
//!    aligned);
//! 2. each L2 table as soon as the guest has moved past its range. The
//!    compressed clusters of the range not yet written (up to
//!    [`PENDING_BYTES`]) wait for it: those that fit fill the space up to
//!    the table's cluster boundary, the rest follow the table. Padding before
//!    an L2 table would otherwise cost half a cluster per table on average
//!    (a quarter of the image of a typical export);
//! 3. at `finish`: the L1 table, the refcount blocks, the refcount table;
//! 4. finally the header cluster at offset 0.
//!
//! So an uploader can send `[cluster_size, progress().final_end)` while the
//! export runs, then the tail and cluster 0 after `finish`.
//!
//! Memory holds the L1 table, one L2 table, one refcount counter per host
//! cluster, and one batch of clusters being compressed in parallel.

use crate::compress::Compressor;
use crate::error::{Error, Result};
use crate::header::{l1_entries_for, CompressionType, MAGIC};
use crate::image::{COPIED, L2_COMPRESSED, SECTOR};
use std::io;

/// Positioned writes to the output (a file, a buffer, an upload spool).
pub trait WriteAt {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for std::fs::File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

impl WriteAt for &std::fs::File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(*self, buf, offset)
    }
}

impl WriteAt for Vec<u8> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }
}

impl<T: WriteAt + ?Sized> WriteAt for Box<T> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
}

/// How data clusters are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain clusters.
    None,
    /// Raw deflate with qemu's 4 KiB window (`compression_type` 0).
    Zlib,
    /// Zstandard (`compression_type` 1).
    #[default]
    Zstd,
}

/// Options of [`Writer::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Cluster size: a power of two from 512 B to 2 MiB (default 64 KiB).
    pub cluster_size: u64,
    /// Compression of data clusters (default zstd).
    pub compression: Compression,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            cluster_size: 64 << 10,
            compression: Compression::Zstd,
        }
    }
}

/// What the writer has emitted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Bytes `[cluster_size, final_end)` of the output are written and will
    /// never change. (Cluster 0 is written by `finish`.)
    pub final_end: u64,
    /// Guest bytes accepted so far (the highest guest offset written).
    pub guest_pos: u64,
    /// Data clusters stored plain.
    pub plain_clusters: u64,
    /// Data clusters stored compressed.
    pub compressed_clusters: u64,
    /// All-zero clusters that were not stored.
    pub zero_clusters: u64,
}

/// Refcount width the writer uses (refcount_order 4, like qemu's default).
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNT_MAX: u16 = u16::MAX;
/// Bytes of clusters compressed per parallel batch.
const BATCH_BYTES: u64 = 16 << 20;
/// v3 header length written (104 + compression_type byte + padding).
const HEADER_LENGTH: u32 = 112;
/// Compressed bytes held back to fill the space before the next aligned
/// write (an L2 table or a plain cluster).
pub const PENDING_BYTES: usize = 1 << 20;

/// Writes a QCOW2 v3 image from guest data given in ascending order.
pub struct Writer<W: WriteAt> {
    sink: W,
    cluster_bits: u32,
    virtual_size: u64,
    compression: Option<CompressionType>,
    l2_bits: u32,
    l1: Vec<u64>,
    /// L1 index and entries of the L2 table being filled.
    l2: Option<(u64, Vec<u64>)>,
    /// End of everything emitted (cluster 0 is reserved).
    next: u64,
    /// One counter per host cluster.
    refcounts: Vec<u16>,
    /// Guest cluster being assembled and its bytes.
    cur: Option<(u64, Vec<u8>)>,
    /// Guest bytes accepted.
    pos: u64,
    batch: Vec<(u64, Vec<u8>)>,
    batch_limit: usize,
    compressors: Vec<Compressor>,
    spare: Vec<Vec<u8>>,
    progress: Progress,
    zeros: Vec<u8>,
    /// Compressed clusters of the current L2 range not yet written.
    pending: std::collections::VecDeque<(u64, Vec<u8>)>,
    pending_bytes: usize,
}

impl<W: WriteAt> Writer<W> {
    /// Starts an image of `virtual_size` bytes, rounded up to a multiple of
    /// 512 (qemu ignores a partial last sector). Nothing is written until
    /// the first cluster completes.
    pub fn new(sink: W, virtual_size: u64, opts: WriterOptions) -> Result<Self> {
        let virtual_size = virtual_size.checked_next_multiple_of(512).ok_or_else(|| {
            Error::InvalidArgument(format!("virtual size {virtual_size} is too large"))
        })?;
        let cs = opts.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return Err(Error::InvalidArgument(format!(
                "cluster size {cs} is not a power of two between 512 and 2097152"
            )));
        }
        let cluster_bits = cs.trailing_zeros();
        let l2_bits = cluster_bits - 3;
        let l1_size = l1_entries_for(virtual_size, cluster_bits, l2_bits);
        if l1_size * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::InvalidArgument(format!(
                "virtual size {virtual_size} needs an L1 table over 32 MiB; use larger clusters"
            )));
        }
        let compression = match opts.compression {
            Compression::None => None,
            Compression::Zlib => Some(CompressionType::Zlib),
            Compression::Zstd => Some(CompressionType::Zstd),
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16);
        let mut compressors = Vec::new();
        if let Some(kind) = compression {
            for _ in 0..threads {
                compressors.push(Compressor::new(kind)?);
            }
        }
        Ok(Writer {
            sink,
            cluster_bits,
            virtual_size,
            compression,
            l2_bits,
            l1: vec![0; l1_size as usize],
            l2: None,
            next: cs,
            refcounts: vec![1],
            cur: None,
            pos: 0,
            batch: Vec::new(),
            batch_limit: (BATCH_BYTES / cs).max(threads as u64) as usize,
            compressors,
            spare: Vec::new(),
            progress: Progress {
                final_end: cs,
                ..Progress::default()
            },
            zeros: vec![0; cs as usize],
            pending: std::collections::VecDeque::new(),
            pending_bytes: 0,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// What has been emitted so far.
    pub fn progress(&self) -> Progress {
        Progress {
            final_end: self.next,
            guest_pos: self.pos,
            ..self.progress
        }
    }

    /// The virtual size given to [`Writer::new`].
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Adds guest bytes at `guest_offset`, which must not be below the end
    /// of the previous write. Gaps read as zeros; all-zero clusters are not
    /// stored.
    pub fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        if guest_offset < self.pos {
            return Err(Error::InvalidArgument(format!(
                "write at guest offset {guest_offset:#x} goes backwards (already at {:#x})",
                self.pos
            )));
        }
        let end = guest_offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.virtual_size)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "write of {} bytes at guest offset {guest_offset:#x} goes past the virtual size {}",
                    data.len(),
                    self.virtual_size
                ))
            })?;
        let cs = self.cs();
        let mut off = guest_offset;
        let mut rest = data;
        while !rest.is_empty() {
            let gc = off >> self.cluster_bits;
            let within = (off & (cs - 1)) as usize;
            let n = rest.len().min(cs as usize - within);
            let (chunk, tail) = rest.split_at(n);
            // A whole zero cluster (or zero piece of a cluster not yet
            // started) needs no buffer at all.
            let started = self.cur.as_ref().is_some_and(|(c, _)| *c == gc);
            if !started && chunk.iter().all(|&b| b == 0) {
                self.complete_current()?;
            } else {
                if !started {
                    self.complete_current()?;
                    let mut buf = self.spare.pop().unwrap_or_default();
                    buf.clear();
                    buf.resize(cs as usize, 0);
                    self.cur = Some((gc, buf));
                }
                if let Some((_, buf)) = self.cur.as_mut() {
                    buf[within..within + n].copy_from_slice(chunk);
                }
                if within + n == cs as usize {
                    self.complete_current()?;
                }
            }
            off += n as u64;
            rest = tail;
        }
        self.pos = end;
        Ok(())
    }

    /// Queues the cluster being assembled (if any).
    fn complete_current(&mut self) -> Result<()> {
        let Some((gc, buf)) = self.cur.take() else {
            return Ok(());
        };
        if buf.iter().all(|&b| b == 0) {
            self.progress.zero_clusters += 1;
            self.spare.push(buf);
            return Ok(());
        }
        self.batch.push((gc, buf));
        if self.batch.len() >= self.batch_limit {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Compresses the queued clusters in parallel and emits them in order.
    fn flush_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let mut results: Vec<Option<Vec<u8>>> = vec![None; batch.len()];
        if self.compression.is_some() && !self.compressors.is_empty() {
            let n = self.compressors.len().min(batch.len());
            let per = batch.len().div_ceil(n);
            if n == 1 {
                let c = &mut self.compressors[0];
                for ((_, data), out) in batch.iter().zip(results.iter_mut()) {
                    let mut v = Vec::new();
                    if c.compress(data, &mut v) {
                        *out = Some(v);
                    }
                }
            } else {
                std::thread::scope(|s| {
                    for ((items, outs), c) in batch
                        .chunks(per)
                        .zip(results.chunks_mut(per))
                        .zip(self.compressors.iter_mut())
                    {
                        s.spawn(move || {
                            for ((_, data), out) in items.iter().zip(outs.iter_mut()) {
                                let mut v = Vec::new();
                                if c.compress(data, &mut v) {
                                    *out = Some(v);
                                }
                            }
                        });
                    }
                });
            }
        }
        for ((gc, data), comp) in batch.into_iter().zip(results) {
            self.emit_cluster(gc, &data, comp)?;
            self.spare.push(data);
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.sink
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(format!("writing the image at offset {offset:#x}"), e))
    }

    fn add_ref(&mut self, cluster: u64) -> Result<bool> {
        let i = cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        if self.refcounts[i] == REFCOUNT_MAX {
            return Ok(false);
        }
        self.refcounts[i] += 1;
        Ok(true)
    }

    /// Pads with zeros up to the next cluster boundary.
    fn align(&mut self) -> Result<()> {
        let cs = self.cs();
        let pad = (cs - (self.next & (cs - 1))) & (cs - 1);
        if pad > 0 {
            let zeros = std::mem::take(&mut self.zeros);
            let r = self.write(&zeros[..pad as usize], self.next);
            self.zeros = zeros;
            r?;
            self.next += pad;
        }
        Ok(())
    }

    /// Appends one cluster-aligned cluster; returns its offset.
    fn append_cluster(&mut self, data: &[u8]) -> Result<u64> {
        self.align()?;
        let host = self.next;
        self.write(data, host)?;
        self.add_ref(host >> self.cluster_bits)?;
        self.next += self.cs();
        Ok(host)
    }

    /// Switches the L2 table being filled to the one covering `gc`.
    fn l2_for(&mut self, gc: u64) -> Result<()> {
        let l1i = gc >> self.l2_bits;
        if self.l2.as_ref().is_some_and(|(i, _)| *i == l1i) {
            return Ok(());
        }
        self.emit_l2(false)?;
        self.l2 = Some((l1i, vec![0; 1 << self.l2_bits]));
        Ok(())
    }

    /// Writes the L2 table being filled. The pending compressed clusters
    /// (all of its range) fill the space up to the table's cluster boundary
    /// as far as they fit; the others follow the table (or, with `last`,
    /// all precede it, so nothing but the table separates the data from the
    /// L1 table).
    fn emit_l2(&mut self, last: bool) -> Result<()> {
        if self.l2.is_none() {
            return Ok(());
        }
        if last {
            while let Some((gc, c)) = self.pending.pop_front() {
                self.put_compressed(gc, &c)?;
            }
            self.pending_bytes = 0;
        } else {
            self.fill_gap()?;
        }
        self.align()?;
        let cs = self.cs();
        let table_at = self.next;
        // Place the rest after the table (their entries go into it), then
        // write the table and them, in ascending offsets.
        let rest = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut hosts = Vec::with_capacity(rest.len());
        let mut at = table_at + cs;
        for (gc, c) in &rest {
            let host = self.reserve_compressed(*gc, at, c.len())?;
            at = host + c.len() as u64;
            hosts.push(host);
        }
        let Some((l1i, entries)) = self.l2.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        let host = self.append_cluster(&bytes)?;
        if let Some(slot) = self.l1.get_mut(l1i as usize) {
            *slot = host | COPIED;
        }
        for ((_, c), host) in rest.iter().zip(hosts) {
            self.pad_to(host)?;
            self.write(c, host)?;
            self.next = host + c.len() as u64;
        }
        Ok(())
    }

    /// Writes zeros from the end of the output up to `host`.
    fn pad_to(&mut self, host: u64) -> Result<()> {
        while self.next < host {
            let n = ((host - self.next) as usize).min(self.zeros.len());
            let zeros = std::mem::take(&mut self.zeros);
            let r = self.write(&zeros[..n], self.next);
            self.zeros = zeros;
            r?;
            self.next += n as u64;
        }
        Ok(())
    }

    /// Writes the pending compressed clusters that fit between the end of
    /// the output and the next cluster boundary (largest first).
    fn fill_gap(&mut self) -> Result<()> {
        let cs = self.cs();
        let gap = ((cs - (self.next & (cs - 1))) & (cs - 1)) as usize;
        if gap == 0 || self.pending.is_empty() {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..self.pending.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.pending[i].1.len()));
        let mut take = vec![false; self.pending.len()];
        let mut room = gap;
        for i in order {
            let n = self.pending[i].1.len();
            if n <= room {
                take[i] = true;
                room -= n;
            }
        }
        let all = std::mem::take(&mut self.pending);
        for (i, (gc, c)) in all.into_iter().enumerate() {
            if take[i] {
                self.pending_bytes -= c.len();
                self.put_compressed(gc, &c)?;
            } else {
                self.pending.push_back((gc, c));
            }
        }
        Ok(())
    }

    /// Writes compressed cluster `gc` at the end of the output.
    fn put_compressed(&mut self, gc: u64, c: &[u8]) -> Result<()> {
        let host = self.reserve_compressed(gc, self.next, c.len())?;
        self.pad_to(host)?;
        self.write(c, host)?;
        self.next = host + c.len() as u64;
        Ok(())
    }

    /// Claims `len` compressed bytes for guest cluster `gc` at `at` (or the
    /// next cluster boundary when the host cluster at `at` has no refcount
    /// left) in the current L2 table; returns where they go.
    fn reserve_compressed(&mut self, gc: u64, at: u64, len: usize) -> Result<u64> {
        let cb = self.cluster_bits;
        let mut host = at;
        if self.refcounts.get((host >> cb) as usize) == Some(&REFCOUNT_MAX) {
            host = (host >> cb << cb) + self.cs();
        }
        let last = (host + len as u64 - 1) >> cb;
        for k in (host >> cb)..=last {
            if !self.add_ref(k)? {
                return Err(Error::InvalidArgument("refcount overflow".into()));
            }
        }
        let shift = 62 - (cb - 8);
        if host >= 1 << shift {
            return Err(Error::InvalidArgument(format!(
                "compressed cluster offset {host:#x} does not fit the descriptor"
            )));
        }
        let extra = ((host + len as u64 - 1) / SECTOR) - host / SECTOR;
        if let Some((_, entries)) = self.l2.as_mut() {
            let idx = (gc & ((1 << self.l2_bits) - 1)) as usize;
            entries[idx] = L2_COMPRESSED | (extra << shift) | host;
        }
        Ok(host)
    }

    fn emit_cluster(&mut self, gc: u64, data: &[u8], compressed: Option<Vec<u8>>) -> Result<()> {
        self.l2_for(gc)?;
        if let Some(mut c) = compressed {
            // Held compressed clusters may be many small ones: keep only
            // their bytes, not a cluster-sized buffer each.
            c.shrink_to_fit();
            self.progress.compressed_clusters += 1;
            self.pending_bytes += c.len();
            self.pending.push_back((gc, c));
            // Bounded memory: write the oldest, keep enough to fill a gap.
            while self.pending_bytes > PENDING_BYTES {
                let Some((g, c)) = self.pending.pop_front() else {
                    break;
                };
                self.pending_bytes -= c.len();
                self.put_compressed(g, &c)?;
            }
            return Ok(());
        }
        self.fill_gap()?;
        let host = self.append_cluster(data)?;
        self.progress.plain_clusters += 1;
        if let Some((_, entries)) = self.l2.as_mut() {
            let idx = (gc & ((1 << self.l2_bits) - 1)) as usize;
            entries[idx] = host | COPIED;
        }
        Ok(())
    }

    /// Writes the remaining data, the tables and finally the header; returns
    /// the sink.
    pub fn finish(mut self) -> Result<W> {
        self.complete_current()?;
        self.flush_batch()?;
        self.emit_l2(true)?;
        self.align()?;
        let cs = self.cs();
        let cb = self.cluster_bits;

        // L1 table (none at all for an empty disk, as qemu expects).
        let l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(cs);
        let l1_offset = if l1_clusters == 0 { 0 } else { self.next };
        let mut padded = l1_bytes;
        padded.resize((l1_clusters * cs) as usize, 0);
        if l1_clusters > 0 {
            self.write(&padded, l1_offset)?;
        }
        for k in 0..l1_clusters {
            self.add_ref((l1_offset >> cb) + k)?;
        }
        self.next += l1_clusters * cs;

        // Refcount blocks and table, covering themselves.
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let base = self.next >> cb;
        let (mut rb, mut rt) = (0u64, 1u64);
        loop {
            let total = base + rb + rt;
            let need_rb = total.div_ceil(per_block);
            let need_rt = (need_rb * 8).div_ceil(cs).max(1);
            if need_rb == rb && need_rt == rt {
                break;
            }
            rb = need_rb;
            rt = need_rt;
        }
        for k in 0..rb + rt {
            self.add_ref(base + k)?;
        }
        let total = base + rb + rt;
        self.refcounts.resize(total as usize, 0);
        let rb_offset = self.next;
        let mut block = vec![0u8; cs as usize];
        for b in 0..rb {
            block.fill(0);
            let first = (b * per_block) as usize;
            let last = ((b + 1) * per_block).min(total) as usize;
            for (i, r) in self.refcounts[first..last].iter().enumerate() {
                block[i * 2..i * 2 + 2].copy_from_slice(&r.to_be_bytes());
            }
            self.write(&block, rb_offset + b * cs)?;
        }
        let rt_offset = rb_offset + rb * cs;
        let mut table = vec![0u8; (rt * cs) as usize];
        for b in 0..rb {
            let at = (b * 8) as usize;
            table[at..at + 8].copy_from_slice(&(rb_offset + b * cs).to_be_bytes());
        }
        self.write(&table, rt_offset)?;
        self.next = rt_offset + rt * cs;

        // Header, last.
        let mut h = vec![0u8; cs as usize];
        let put32 =
            |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        h[0..4].copy_from_slice(&MAGIC);
        put32(&mut h, 4, 3);
        put32(&mut h, 20, cb);
        put64(&mut h, 24, self.virtual_size);
        put32(&mut h, 36, self.l1.len() as u32);
        put64(&mut h, 40, l1_offset);
        put64(&mut h, 48, rt_offset);
        put32(&mut h, 56, rt as u32);
        let zstd = self.compression == Some(CompressionType::Zstd);
        put64(
            &mut h,
            72,
            if zstd {
                crate::header::INCOMPAT_COMPRESSION
            } else {
                0
            },
        );
        put32(&mut h, 96, REFCOUNT_ORDER);
        put32(&mut h, 100, HEADER_LENGTH);
        h[104] = u8::from(zstd);
        self.write(&h, 0)?;
        Ok(self.sink)
    }
}
