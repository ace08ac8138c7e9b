//! QCOW2 -> raw conversion: a sparse file (holes where the image has nothing
//! and, like `qemu-img convert`, where a stored 4 KiB block is all zeros) or
//! a stream with zeros written out.
//!
//! The guest space is cut into jobs of contiguous stored runs (at most
//! [`JOB_BYTES`] each); worker threads read each job with as few large reads
//! as possible, inflate compressed clusters, and write. Memory is bounded by
//! the jobs in flight, not by the image.

use crate::error::{Error, Result};
use crate::image::{Backing, HostExtent, Image};
use crate::ReadAt;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

/// Guest bytes per job (and per read for plain data).
pub const JOB_BYTES: u64 = 2 << 20;
/// Granularity of zero detection, as qemu-img's default `-S 4k`.
pub const SPARSE_BLOCK: u64 = 4096;
/// Guest bytes mapped at a time while producing jobs.
const MAP_WINDOW: u64 = 1 << 30;

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConvertStats {
    /// Virtual size (length of the output).
    pub virtual_size: u64,
    /// Guest bytes that were stored in the image (plain or compressed).
    pub stored_bytes: u64,
    /// Bytes actually written to the output (for sparse output, excluding holes).
    pub written_bytes: u64,
}

struct Job {
    seq: u64,
    offset: u64,
    len: u64,
    runs: Vec<HostExtent>,
}

/// Alignment of job buffers. Almost all of a conversion's time is the
/// kernel copying between user memory and the page cache, and its copy
/// routines are fastest on page-aligned buffers (glibc's large allocations
/// start 16 bytes into a page); qemu-img aligns its buffers the same way.
const BUF_ALIGN: usize = 4096;

/// A reusable job buffer whose bytes start on a page boundary.
#[derive(Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Makes the buffer `len` bytes long (contents unspecified: every byte
    /// of a job is overwritten by `load_job`).
    fn set_len(&mut self, len: usize) {
        if self.raw.len() < len + BUF_ALIGN {
            self.raw = vec![0u8; len + BUF_ALIGN];
            self.start = self.raw.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        }
        self.len = len;
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Cuts the stored parts of the guest space into jobs, in guest order.
fn produce_jobs<R: ReadAt>(
    image: &Image<R>,
    mut emit: impl FnMut(Job) -> Result<()>,
) -> Result<u64> {
    let size = image.virtual_size();
    let mut seq = 0u64;
    let mut cur: Option<Job> = None;
    let mut stored = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(MAP_WINDOW);
        for he in image.host_map(pos, n)? {
            match he.backing {
                Backing::Unallocated | Backing::Zero => {
                    if let Some(j) = cur.take() {
                        emit(j)?;
                    }
                }
                Backing::Data { .. } | Backing::Compressed { .. } => {
                    stored += he.len;
                    // Split plain runs at JOB_BYTES-aligned guest offsets.
                    let mut off = he.offset;
                    let end = he.offset + he.len;
                    while off < end {
                        let lim = ((off / JOB_BYTES) + 1) * JOB_BYTES;
                        let piece_end = end.min(lim);
                        let backing = match he.backing {
                            Backing::Data { host } => Backing::Data {
                                host: host + (off - he.offset),
                            },
                            b => b,
                        };
                        let piece = HostExtent {
                            offset: off,
                            len: piece_end - off,
                            backing,
                        };
                        let fits = cur.as_ref().is_some_and(|j| {
                            j.offset + j.len == off && (j.offset / JOB_BYTES == off / JOB_BYTES)
                        });
                        if !fits {
                            if let Some(j) = cur.take() {
                                emit(j)?;
                            }
                            seq += 1;
                            cur = Some(Job {
                                seq,
                                offset: off,
                                len: 0,
                                runs: Vec::new(),
                            });
                        }
                        if let Some(j) = cur.as_mut() {
                            j.len += piece.len;
                            j.runs.push(piece);
                        }
                        off = piece_end;
                    }
                }
            }
        }
        pos += n;
    }
    if let Some(j) = cur.take() {
        emit(j)?;
    }
    Ok(stored)
}

/// Reads the guest bytes of a job into `buf` (resized to `job.len`).
fn load_job<R: ReadAt>(
    image: &Image<R>,
    job: &Job,
    buf: &mut AlignedBuf,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    // Every byte of a job is covered by one of its runs and overwritten
    // below, so a reused buffer needs no zeroing.
    buf.set_len(job.len as usize);
    let buf = buf.as_mut_slice();
    let cs = image.cluster_size();
    let mut i = 0;
    while i < job.runs.len() {
        let r = job.runs[i];
        let s = (r.offset - job.offset) as usize;
        match r.backing {
            Backing::Compressed { .. } => {
                // A batch of compressed clusters whose bytes are close
                // together in the file: one read for all.
                let mut j = i;
                let (mut lo, mut hi) = (u64::MAX, 0u64);
                while j < job.runs.len() {
                    if let Backing::Compressed { host, size } = job.runs[j].backing {
                        let nlo = lo.min(host);
                        let nhi = hi.max(host.saturating_add(size));
                        if j > i && nhi - nlo > 2 * JOB_BYTES {
                            break;
                        }
                        lo = nlo;
                        hi = nhi;
                        j += 1;
                    } else {
                        break;
                    }
                }
                let hi = hi.min(image.file_size());
                if lo >= hi {
                    return Err(Error::corrupt(
                        lo,
                        "compressed cluster lies beyond the end of the file",
                    ));
                }
                scratch.clear();
                scratch.resize((hi - lo) as usize, 0);
                crate::header::read(image.storage(), scratch, lo, "compressed clusters")?;
                let mut cluster = vec![0u8; cs as usize];
                for r in &job.runs[i..j] {
                    if let Backing::Compressed { host, size } = r.backing {
                        let a = (host - lo) as usize;
                        let b = (host.saturating_add(size).min(hi) - lo) as usize;
                        let input = scratch.get(a..b).unwrap_or(&[]);
                        crate::image::decompress_with_local(
                            image.header().compression_type,
                            input,
                            &mut cluster,
                            host,
                        )?;
                        let within = (r.offset & (cs - 1)) as usize;
                        let s = (r.offset - job.offset) as usize;
                        buf[s..s + r.len as usize]
                            .copy_from_slice(&cluster[within..within + r.len as usize]);
                    }
                }
                i = j;
                continue;
            }
            Backing::Data { host } => {
                image.read_host(host, &mut buf[s..s + r.len as usize])?;
            }
            Backing::Zero | Backing::Unallocated => buf[s..s + r.len as usize].fill(0),
        }
        i += 1;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    // Word-at-a-time comparison; the compiler vectorizes this.
    let mut chunks = b.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

/// Writes a job's bytes at its guest offset, skipping all-zero 4 KiB blocks
/// (qemu-img's default sparse detection). Returns bytes written.
fn write_sparse(out: &File, offset: u64, data: &[u8]) -> Result<u64> {
    let end = offset + data.len() as u64;
    let mut written = 0u64;
    let mut run_start: Option<u64> = None;
    let mut pos = offset;
    let flush = |from: u64, to: u64, written: &mut u64| -> Result<()> {
        let a = (from - offset) as usize;
        let b = (to - offset) as usize;
        out.write_all_at(&data[a..b], from)
            .map_err(|e| Error::io(format!("writing the raw output at offset {from:#x}"), e))?;
        *written += to - from;
        Ok(())
    };
    while pos < end {
        let blk_end = ((pos / SPARSE_BLOCK) + 1) * SPARSE_BLOCK;
        let e = blk_end.min(end);
        let chunk = &data[(pos - offset) as usize..(e - offset) as usize];
        // qemu writes a zero tail that ends a request inside a block (only
        // possible with clusters smaller than 4 KiB); a zero head is skipped.
        let keep = !is_zero(chunk) || (e == end && e < blk_end);
        if keep {
            if run_start.is_none() {
                run_start = Some(pos);
            }
        } else if let Some(s) = run_start.take() {
            flush(s, pos, &mut written)?;
        }
        pos = e;
    }
    if let Some(s) = run_start.take() {
        flush(s, end, &mut written)?;
    }
    Ok(written)
}

/// The next job for a worker, or `None` once the producer is done. After a
/// failure, jobs are taken and dropped unprocessed: draining keeps the
/// producer from blocking on a full channel.
fn next_job(rx: &Mutex<mpsc::Receiver<Job>>, failed: &AtomicBool) -> Option<Job> {
    loop {
        let job = rx.lock().ok()?.recv().ok()?;
        if !failed.load(Ordering::Relaxed) {
            return Some(job);
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Runs the job pipeline: worker threads read and inflate jobs, and
/// `deliver(offset, bytes)` sees each job's bytes in guest order on the
/// calling thread (one writer: parallel writes to one file only contend on
/// the kernel's inode lock). Returns the guest bytes stored in the image.
fn pipeline<R: ReadAt>(
    image: &Image<R>,
    mut deliver: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let n = threads();
    let (tx, rx) = mpsc::sync_channel::<Job>(n * 2);
    let rx = Mutex::new(rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, u64, Result<AlignedBuf>)>(n * 2);
    let (pool_tx, pool_rx) = mpsc::channel::<AlignedBuf>();
    let pool_rx = Mutex::new(pool_rx);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<u64> {
        for _ in 0..n {
            let rx = &rx;
            let done_tx = done_tx.clone();
            let pool_rx = &pool_rx;
            let failed = &failed;
            s.spawn(move || {
                let mut scratch = Vec::new();
                while let Some(job) = next_job(rx, failed) {
                    let mut buf = pool_rx
                        .lock()
                        .ok()
                        .and_then(|p| p.try_recv().ok())
                        .unwrap_or_default();
                    let r = load_job(image, &job, &mut buf, &mut scratch).map(|_| buf);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if done_tx.send((job.seq, job.offset, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let failed = &failed;
        let producer = s.spawn(move || {
            let r = produce_jobs(image, |j| {
                if failed.load(Ordering::Relaxed) {
                    return Err(Error::io("converting", std::io::Error::other("stopped")));
                }
                tx.send(j)
                    .map_err(|_| Error::io("converting", std::io::Error::other("a worker stopped")))
            });
            drop(tx);
            r
        });
        let mut next_seq = 1u64;
        let mut pending: BTreeMap<u64, (u64, AlignedBuf)> = BTreeMap::new();
        let mut result: Result<()> = Ok(());
        for (seq, offset, r) in done_rx.iter() {
            if result.is_err() {
                continue; // drain so workers can finish
            }
            match r {
                Err(e) => result = Err(e),
                Ok(buf) => {
                    pending.insert(seq, (offset, buf));
                    while let Some((off, buf)) = pending.remove(&next_seq) {
                        next_seq += 1;
                        if let Err(e) = deliver(off, buf.as_slice()) {
                            failed.store(true, Ordering::Relaxed);
                            result = Err(e);
                            break;
                        }
                        let _ = pool_tx.send(buf);
                    }
                }
            }
        }
        let stored = match producer.join() {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                "converting",
                std::io::Error::other("the mapper panicked"),
            )),
        };
        // A worker's or the writer's error explains a stopped producer.
        result?;
        stored
    })
}

/// Converts to a sparse raw file: sets its length to the virtual size and
/// writes only stored, non-zero 4 KiB blocks. Give it a new, empty file
/// (not one opened with `O_TRUNC`, which makes ext4 flush it on close).
///
/// Each worker thread reads a job and writes it itself: a sparse file needs
/// no ordering, and with no hand-over between a reader and a writer thread
/// a busy machine's scheduling delays do not stall the pipeline.
pub fn to_raw<R: ReadAt>(image: &Image<R>, out: &File) -> Result<ConvertStats> {
    // Truncating to zero only when needed: ext4 flushes a file that was
    // truncated to zero and rewritten when it is closed (auto_da_alloc),
    // which costs more than the whole conversion.
    let sized = |out: &File| -> std::io::Result<()> {
        if out.metadata()?.len() != 0 {
            out.set_len(0)?;
        }
        out.set_len(image.virtual_size())
    };
    sized(out).map_err(|e| Error::io("sizing the raw output", e))?;
    // qemu allocates the first block of every raw file it creates (to probe
    // alignment later); do the same so holes match `qemu-img convert`.
    let first = if image.virtual_size() >= 4096 {
        4096
    } else {
        image.virtual_size().min(512)
    };
    out.write_all_at(&vec![0u8; first as usize], 0)
        .map_err(|e| Error::io("writing the raw output at offset 0", e))?;

    let n = threads();
    let (tx, rx) = mpsc::sync_channel::<Job>(n * 2);
    let rx = Mutex::new(rx);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<ConvertStats> {
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let rx = &rx;
                let failed = &failed;
                s.spawn(move || -> Result<u64> {
                    let mut buf = AlignedBuf::default();
                    let mut scratch = Vec::new();
                    let mut written = 0u64;
                    let mut error = None;
                    while let Some(job) = next_job(rx, failed) {
                        let r = load_job(image, &job, &mut buf, &mut scratch)
                            .and_then(|()| write_sparse(out, job.offset, buf.as_slice()));
                        match r {
                            Ok(w) => written += w,
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                error.get_or_insert(e);
                            }
                        }
                    }
                    error.map_or(Ok(written), Err)
                })
            })
            .collect();
        let stored = produce_jobs(image, |j| {
            if failed.load(Ordering::Relaxed) {
                return Err(Error::io("converting", std::io::Error::other("stopped")));
            }
            tx.send(j)
                .map_err(|_| Error::io("converting", std::io::Error::other("a worker stopped")))
        });
        drop(tx);
        let mut written = 0u64;
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok(k)) => written += k,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::io(
                        "converting",
                        std::io::Error::other("a worker panicked"),
                    ));
                }
            }
        }
        // A worker's error explains a stopped producer.
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(ConvertStats {
            virtual_size: image.virtual_size(),
            stored_bytes: stored?,
            written_bytes: written,
        })
    })
}

/// Converts to a stream (e.g. stdout): every byte of the virtual disk is
/// written in order, zeros included.
pub fn to_raw_stream<R: ReadAt, W: Write>(image: &Image<R>, mut out: W) -> Result<ConvertStats> {
    let size = image.virtual_size();
    let zeros = vec![0u8; JOB_BYTES as usize];
    let write_zeros = |out: &mut W, mut len: u64| -> Result<()> {
        while len > 0 {
            let k = len.min(JOB_BYTES) as usize;
            out.write_all(&zeros[..k])
                .map_err(|e| Error::io("writing the raw stream", e))?;
            len -= k as u64;
        }
        Ok(())
    };
    let mut pos = 0u64;
    let mut written = 0u64;
    let stored = pipeline(image, |off, buf| {
        write_zeros(&mut out, off - pos)?;
        out.write_all(buf)
            .map_err(|e| Error::io("writing the raw stream", e))?;
        pos = off + buf.len() as u64;
        written += buf.len() as u64;
        Ok(())
    })?;
    write_zeros(&mut out, size - pos)?;
    out.flush()
        .map_err(|e| Error::io("flushing the raw stream", e))?;
    Ok(ConvertStats {
        virtual_size: size,
        stored_bytes: stored,
        written_bytes: written + (size - pos),
    })
}
