//! The reader: guest view of an image through its L1/L2 tables.

use crate::compress::Decompressor;
use crate::error::{Error, Result};
use crate::header::{self, CompressionType, Header};
use crate::ReadAt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bits 9..=55 of L1 entries, standard L2 entries and refcount table entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
pub(crate) const L2_COMPRESSED: u64 = 1 << 62;
/// L1/L2 entry bit 63: refcount is exactly one.
pub(crate) const COPIED: u64 = 1 << 63;
/// Standard cluster descriptor bit 0 (v3 without extended L2): reads as zeros.
pub(crate) const L2_ZERO: u64 = 1;
/// qemu's compressed-cluster sector.
pub(crate) const SECTOR: u64 = 512;
/// Total bytes of L2 tables the cache keeps.
const L2_CACHE_BYTES: u64 = 32 << 20;

/// What a guest range is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Stored data (plain or compressed).
    Data,
    /// Explicitly zero (v3 zero flag or subcluster zero bit).
    Zero,
    /// Not allocated: reads as zeros.
    Unallocated,
}

/// A run of guest bytes with the same [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What backs it.
    pub kind: ExtentKind,
}

/// Where a guest range's bytes come from in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Reads as zeros, nothing stored.
    Unallocated,
    /// Reads as zeros by the zero flag.
    Zero,
    /// Plain bytes at this file offset (contiguous for the whole run).
    Data {
        /// File offset of the first byte.
        host: u64,
    },
    /// One compressed cluster (the run is exactly that guest cluster,
    /// clipped to the request).
    Compressed {
        /// File offset of the compressed bytes.
        host: u64,
        /// Bytes to read (may extend past the end of the file).
        size: u64,
    },
}

/// A guest run with its [`Backing`]; adjacent plain data runs that are also
/// contiguous in the file are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostExtent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes are.
    pub backing: Backing,
}

/// Bounded LRU of decoded L2 tables, keyed by file offset.
struct L2Cache {
    map: HashMap<u64, (Arc<[u64]>, u64)>,
    tick: u64,
    capacity: usize,
}

impl L2Cache {
    fn get(&mut self, off: u64) -> Option<Arc<[u64]>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(&off).map(|(tab, stamp)| {
            *stamp = t;
            tab.clone()
        })
    }
    fn put(&mut self, off: u64, tab: Arc<[u64]>) {
        if self.map.len() >= self.capacity {
            if let Some(victim) = self
                .map
                .iter()
                .min_by_key(|(_, (_, s))| *s)
                .map(|(k, _)| *k)
            {
                self.map.remove(&victim);
            }
        }
        self.tick += 1;
        self.map.insert(off, (tab, self.tick));
    }
}

/// A QCOW2 image opened for reading.
///
/// `read_at` and `map` take `&self`: the image can be shared between threads
/// (the L2 cache sits behind a mutex held only for lookups).
pub struct Image<R: ReadAt> {
    storage: R,
    header: Header,
    file_size: u64,
    l1: Vec<u64>,
    cache: Mutex<L2Cache>,
    /// Recently inflated compressed clusters, by file offset: small reads
    /// from one compressed cluster inflate it once.
    inflated: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

/// Inflated clusters kept (bytes).
const INFLATED_CACHE_BYTES: u64 = 8 << 20;

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

impl<R: ReadAt> Image<R> {
    /// Opens an image: reads and validates the header and the L1 table.
    pub fn open(storage: R) -> Result<Image<R>> {
        let header = Header::read(&storage)?;
        let file_size = storage
            .size()
            .map_err(|e| Error::io("getting the image size", e))?;
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        if !raw.is_empty() {
            header::read(&storage, &mut raw, header.l1_table_offset, "L1 table")?;
        }
        let cs = header.cluster_size();
        let mut l1 = Vec::with_capacity(header.l1_size as usize);
        for (i, c) in raw.chunks_exact(8).enumerate() {
            let e = u64::from_be_bytes(c.try_into().unwrap_or([0; 8]));
            let off = e & OFFSET_MASK;
            if off % cs != 0 {
                return Err(Error::corrupt(
                    header.l1_table_offset + i as u64 * 8,
                    format!("L1 entry {i} points to a misaligned L2 table at {off:#x}"),
                ));
            }
            l1.push(e);
        }
        let capacity = (L2_CACHE_BYTES / cs).clamp(4, 4096) as usize;
        Ok(Image {
            storage,
            file_size,
            l1,
            cache: Mutex::new(L2Cache {
                map: HashMap::new(),
                tick: 0,
                capacity,
            }),
            inflated: Mutex::new(Vec::new()),
            header,
        })
    }

    /// Virtual disk size in bytes: the header's size rounded down to a
    /// multiple of 512, as qemu sees it (a partial last sector is ignored).
    pub fn virtual_size(&self) -> u64 {
        self.header.size & !511
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The underlying storage.
    pub fn storage(&self) -> &R {
        &self.storage
    }

    /// Size of the image file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The L2 table an L1 entry points to, or `None` when unallocated.
    pub(crate) fn l2_table(&self, l1_index: u64) -> Result<Option<Arc<[u64]>>> {
        let Some(&e) = self.l1.get(l1_index as usize) else {
            return Ok(None);
        };
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if let Ok(mut c) = self.cache.lock() {
            if let Some(t) = c.get(off) {
                return Ok(Some(t));
            }
        }
        let cs = self.cluster_size();
        let at = self.header.l1_table_offset + l1_index * 8;
        if off.checked_add(cs).is_none_or(|end| end > self.file_size) {
            return Err(Error::corrupt(
                at,
                format!("L1 entry {l1_index} points to an L2 table at {off:#x}, beyond the end of the file"),
            ));
        }
        let mut raw = vec![0u8; cs as usize];
        header::read(&self.storage, &mut raw, off, "L2 table")?;
        let tab: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if let Ok(mut c) = self.cache.lock() {
            c.put(off, tab.clone());
        }
        Ok(Some(tab))
    }

    /// Decodes the mapping of guest cluster `gc`, as a list of
    /// `(offset within cluster, len, backing)` (several with subclusters).
    fn cluster_backing(&self, gc: u64, out: &mut Vec<(u64, u64, Backing)>) -> Result<()> {
        out.clear();
        let h = &self.header;
        let cs = h.cluster_size();
        let l2_bits = h.l2_bits();
        let l1_index = gc >> l2_bits;
        let l2_index = (gc & ((1 << l2_bits) - 1)) as usize;
        let Some(tab) = self.l2_table(l1_index)? else {
            out.push((0, cs, Backing::Unallocated));
            return Ok(());
        };
        let ext = h.extended_l2();
        let (e, bitmap) = if ext {
            (
                tab.get(l2_index * 2).copied().unwrap_or(0),
                tab.get(l2_index * 2 + 1).copied().unwrap_or(0),
            )
        } else {
            (tab.get(l2_index).copied().unwrap_or(0), 0)
        };
        let l2_off = self.l1[l1_index as usize] & OFFSET_MASK;
        let at = l2_off + l2_index as u64 * h.l2_entry_size();
        if e & L2_COMPRESSED != 0 {
            let (host, size) = compressed_extent(h.cluster_bits, e);
            if host >= self.file_size {
                return Err(Error::corrupt(
                    at,
                    format!("compressed cluster at {host:#x} for guest offset {:#x} is beyond the end of the file", gc << h.cluster_bits),
                ));
            }
            out.push((0, cs, Backing::Compressed { host, size }));
            return Ok(());
        }
        let host = e & OFFSET_MASK;
        if host % cs != 0 {
            return Err(Error::corrupt(
                at,
                format!("L2 entry points to a misaligned data cluster at {host:#x}"),
            ));
        }
        let check_host = |host: u64| -> Result<()> {
            if host >= self.file_size {
                Err(Error::corrupt(
                    at,
                    format!(
                        "data cluster at {host:#x} for guest offset {:#x} is beyond the end of the file",
                        gc << h.cluster_bits
                    ),
                ))
            } else {
                Ok(())
            }
        };
        if !ext {
            if h.version >= 3 && e & L2_ZERO != 0 {
                out.push((0, cs, Backing::Zero));
            } else if host == 0 {
                out.push((0, cs, Backing::Unallocated));
            } else {
                check_host(host)?;
                out.push((0, cs, Backing::Data { host }));
            }
            return Ok(());
        }
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(Error::corrupt(
                at + 8,
                "subcluster bitmap marks subclusters both allocated and zero",
            ));
        }
        if alloc != 0 && host == 0 {
            return Err(Error::corrupt(
                at,
                "subclusters are allocated but the L2 entry has no host offset",
            ));
        }
        if alloc != 0 {
            check_host(host)?;
        }
        let sc = cs / 32;
        for i in 0..32u64 {
            let b = if alloc & (1 << i) != 0 {
                Backing::Data {
                    host: host + i * sc,
                }
            } else if zero & (1 << i) != 0 {
                Backing::Zero
            } else {
                Backing::Unallocated
            };
            push_merge(out, i * sc, sc, b);
        }
        Ok(())
    }

    /// The backing of `[offset, offset+len)`, merged into runs. Memory is
    /// proportional to the number of runs; map large images in windows.
    pub fn host_map(&self, offset: u64, len: u64) -> Result<Vec<HostExtent>> {
        self.check_range(offset, len)?;
        let h = &self.header;
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        let l2_span = cs << h.l2_bits();
        let end = offset + len;
        let mut out: Vec<HostExtent> = Vec::new();
        let mut pos = offset;
        let mut parts = Vec::with_capacity(32);
        while pos < end {
            let gc = pos >> cb;
            // Skip whole unallocated L2 ranges at once.
            let l1_index = gc >> h.l2_bits();
            let l1e = self.l1.get(l1_index as usize).copied().unwrap_or(0);
            if l1e & OFFSET_MASK == 0 {
                let next = ((pos / l2_span) + 1).saturating_mul(l2_span).min(end);
                push_host(&mut out, pos, next - pos, Backing::Unallocated);
                pos = next;
                continue;
            }
            self.cluster_backing(gc, &mut parts)?;
            let cstart = gc << cb;
            for &(o, l, b) in &parts {
                let s = (cstart + o).max(pos);
                let e = (cstart + o + l).min(end);
                if s >= e {
                    continue;
                }
                let b = match b {
                    Backing::Data { host } => Backing::Data {
                        host: host + (s - cstart - o),
                    },
                    other => other,
                };
                push_host(&mut out, s, e - s, b);
            }
            pos = (cstart + cs).min(end);
        }
        Ok(out)
    }

    /// Allocation of `[offset, offset+len)` as merged extents (like
    /// `qemu-img map`): what a sparse conversion needs.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out: Vec<Extent> = Vec::new();
        for he in self.host_map(offset, len)? {
            let kind = match he.backing {
                Backing::Unallocated => ExtentKind::Unallocated,
                Backing::Zero => ExtentKind::Zero,
                Backing::Data { .. } | Backing::Compressed { .. } => ExtentKind::Data,
            };
            match out.last_mut() {
                Some(l) if l.kind == kind && l.offset + l.len == he.offset => l.len += he.len,
                _ => out.push(Extent {
                    offset: he.offset,
                    len: he.len,
                    kind,
                }),
            }
        }
        Ok(out)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.virtual_size() => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                virtual_size: self.virtual_size(),
            }),
        }
    }

    /// Reads guest bytes; unallocated and zero ranges read as zeros. Errors
    /// when the range goes past the virtual size.
    pub fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.check_range(guest_offset, len)?;
        // Map in windows so a huge buffer does not mean a huge extent list.
        let window = self.cluster_size() * 1024;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(window);
            let runs = self.host_map(guest_offset + done, n)?;
            for r in runs {
                let s = (r.offset - guest_offset) as usize;
                let dst = &mut buf[s..s + r.len as usize];
                self.fill(r, dst)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Fills `dst` (exactly `r.len` bytes) with the guest bytes of `r`.
    pub(crate) fn fill(&self, r: HostExtent, dst: &mut [u8]) -> Result<()> {
        match r.backing {
            Backing::Unallocated | Backing::Zero => dst.fill(0),
            Backing::Data { host } => self.read_host(host, dst)?,
            Backing::Compressed { host, size } => {
                let cs = self.cluster_size();
                let s = (r.offset & (cs - 1)) as usize;
                let hit = self
                    .inflated
                    .lock()
                    .ok()
                    .and_then(|c| c.iter().find(|(h, _)| *h == host).map(|(_, d)| d.clone()));
                let cluster = match hit {
                    Some(d) => d,
                    None => {
                        let mut cluster = vec![0u8; cs as usize];
                        let mut input = Vec::new();
                        self.read_compressed(host, size, &mut input, &mut cluster)?;
                        let d = Arc::new(cluster);
                        if let Ok(mut c) = self.inflated.lock() {
                            let cap = (INFLATED_CACHE_BYTES / cs).clamp(4, 64) as usize;
                            if c.len() >= cap {
                                c.remove(0);
                            }
                            c.push((host, d.clone()));
                        }
                        d
                    }
                };
                dst.copy_from_slice(&cluster[s..s + dst.len()]);
            }
        }
        Ok(())
    }

    /// Reads plain data at a file offset; bytes past the end of the file
    /// read as zeros (as qemu does for a short last cluster).
    pub(crate) fn read_host(&self, host: u64, dst: &mut [u8]) -> Result<()> {
        let avail = self.file_size.saturating_sub(host).min(dst.len() as u64) as usize;
        let (head, tail) = dst.split_at_mut(avail);
        if !head.is_empty() {
            header::read(&self.storage, head, host, "data cluster")?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Reads and inflates one compressed cluster into `cluster`.
    pub(crate) fn read_compressed(
        &self,
        host: u64,
        size: u64,
        input: &mut Vec<u8>,
        cluster: &mut [u8],
    ) -> Result<()> {
        let avail = self.file_size.saturating_sub(host).min(size) as usize;
        input.clear();
        input.resize(avail, 0);
        header::read(&self.storage, input, host, "compressed cluster")?;
        decompress_with_local(self.header.compression_type, input, cluster, host)
    }
}

/// Decompresses with this thread's reusable decompressor.
pub(crate) fn decompress_with_local(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
    at: u64,
) -> Result<()> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.get_or_insert_with(Decompressor::new)
            .decompress(kind, input, out, at)
    })
}

/// File offset and byte count of a compressed cluster descriptor (qemu:
/// `x = 62 - (cluster_bits - 8)`; bits `0..x` offset, `x..62` additional
/// 512-byte sectors).
pub(crate) fn compressed_extent(cluster_bits: u32, e: u64) -> (u64, u64) {
    let shift = 62 - (cluster_bits - 8);
    let host = e & ((1u64 << shift) - 1);
    let mask = (1u64 << (cluster_bits - 8)) - 1;
    let sectors = ((e >> shift) & mask) + 1;
    let size = sectors * SECTOR - (host & (SECTOR - 1));
    (host, size)
}

fn push_merge(out: &mut Vec<(u64, u64, Backing)>, o: u64, l: u64, b: Backing) {
    if let Some(last) = out.last_mut() {
        let contiguous = match (last.2, b) {
            (Backing::Data { host: a }, Backing::Data { host: c }) => a + last.1 == c,
            (Backing::Zero, Backing::Zero) | (Backing::Unallocated, Backing::Unallocated) => true,
            _ => false,
        };
        if contiguous && last.0 + last.1 == o {
            last.1 += l;
            return;
        }
    }
    out.push((o, l, b));
}

fn push_host(out: &mut Vec<HostExtent>, offset: u64, len: u64, backing: Backing) {
    if let Some(last) = out.last_mut() {
        if last.offset + last.len == offset {
            let merge = match (last.backing, backing) {
                (Backing::Data { host: a }, Backing::Data { host: c }) => a + last.len == c,
                (Backing::Zero, Backing::Zero) | (Backing::Unallocated, Backing::Unallocated) => {
                    true
                }
                _ => false,
            };
            if merge {
                last.len += len;
                return;
            }
        }
    }
    out.push(HostExtent {
        offset,
        len,
        backing,
    });
}
