//! Streaming an image to the server while it is being written.
//!
//! [`ChunkSink`] is the QCOW2 writer's output: it cuts the byte stream into
//! fixed windows `[k * chunk, (k + 1) * chunk)` (the last one ends at the
//! image's end) and hands each complete window to a bounded queue served by
//! [`Pool`]'s upload workers. Windows are fixed, so a re-run of the same
//! collection (same key, same bytes) produces exactly the same chunks and
//! the server's held ranges say which to skip.
//!
//! The writer's streaming contract (qcow2/src/writer.rs): every byte goes
//! beyond everything written before, except the header cluster at offset
//! 0, written last. So memory holds window 0 (sent last), the window being
//! filled, the queue and one chunk per worker: `(2 + queue + workers) *
//! chunk` bytes at most.

use super::client::{sha256_hex, ByteRange, Client, ManifestChunk, UploadError};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Counters shared with the progress display.
#[derive(Default)]
pub struct Counters {
    /// Bytes the server acknowledged (stored now or held before).
    pub done: AtomicU64,
    /// Bytes sent in this run (PUT bodies acknowledged).
    pub sent: AtomicU64,
    /// Bytes skipped because the server held them already.
    pub skipped: AtomicU64,
    /// Latest retry message (for the display), empty when none.
    pub waiting: Mutex<String>,
}

type Manifest = Mutex<BTreeMap<u64, (u64, String)>>;

/// Upload workers consuming chunks from a bounded queue.
pub struct Pool {
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    error: Arc<Mutex<Option<UploadError>>>,
    manifest: Arc<Manifest>,
}

/// Whether `[s, e)` lies inside one of the merged, sorted `held` ranges.
pub fn is_held(held: &[ByteRange], s: u64, e: u64) -> bool {
    let i = held.partition_point(|r| r.offset + r.length <= s);
    held.get(i)
        .is_some_and(|r| r.offset <= s && e <= r.offset + r.length)
}

struct Worker {
    rx: Arc<Mutex<Receiver<(u64, Vec<u8>)>>>,
    failed: Arc<AtomicBool>,
    error: Arc<Mutex<Option<UploadError>>>,
    manifest: Arc<Manifest>,
    held: Arc<Vec<ByteRange>>,
    counters: Arc<Counters>,
    client: Client,
    id: String,
}

impl Pool {
    /// Starts `workers` threads sending to upload `id`, skipping chunks in
    /// `held`; the queue holds `queue` chunks.
    pub fn start(
        client: Client,
        id: String,
        held: Vec<ByteRange>,
        workers: usize,
        queue: usize,
        counters: Arc<Counters>,
    ) -> Pool {
        let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let manifest = Arc::new(Mutex::new(BTreeMap::new()));
        let held = Arc::new(held);
        let handles = (0..workers.max(1))
            .map(|_| {
                let w = Worker {
                    rx: rx.clone(),
                    failed: failed.clone(),
                    error: error.clone(),
                    manifest: manifest.clone(),
                    held: held.clone(),
                    counters: counters.clone(),
                    client: client.clone(),
                    id: id.clone(),
                };
                std::thread::spawn(move || w.run())
            })
            .collect();
        Pool {
            tx: Some(tx),
            workers: handles,
            failed,
            error,
            manifest,
        }
    }

    /// Queues a chunk (blocks while the queue is full). Fails once a
    /// worker met a permanent error, so the producer stops early.
    pub fn send(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the upload failed"));
        }
        match &self.tx {
            Some(tx) => tx
                .send((offset, data))
                .map_err(|_| io::Error::other("the upload failed")),
            None => Err(io::Error::other("the upload is closed")),
        }
    }

    /// Waits for every queued chunk; returns the manifest (chunks in order)
    /// or the first permanent error.
    pub fn finish(mut self) -> Result<Vec<ManifestChunk>, UploadError> {
        self.tx.take();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        let m = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.iter()
            .map(|(&offset, (length, sha))| ManifestChunk {
                offset,
                length: *length,
                sha256: sha.clone(),
            })
            .collect())
    }

    /// The first permanent error, if a worker met one (taking it).
    pub fn take_error(&self) -> Option<UploadError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.failed.store(true, Ordering::Relaxed);
        self.tx.take();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Worker {
    fn run(self) {
        let counters = self.counters.clone();
        let on_wait = move |msg: &str| {
            if let Ok(mut w) = counters.waiting.lock() {
                *w = msg.to_string();
            }
        };
        loop {
            let next = {
                let Ok(rx) = self.rx.lock() else { return };
                rx.recv()
            };
            let Ok((offset, data)) = next else { return };
            if self.failed.load(Ordering::Relaxed) {
                continue; // drain, so the producer never blocks forever
            }
            let len = data.len() as u64;
            let sha = sha256_hex(&data);
            if is_held(&self.held, offset, offset + len) {
                self.counters.skipped.fetch_add(len, Ordering::Relaxed);
            } else {
                match self
                    .client
                    .put_chunk(&self.id, offset, &data, &sha, &on_wait)
                {
                    Ok(_) => {
                        self.counters.sent.fetch_add(len, Ordering::Relaxed);
                        if let Ok(mut w) = self.counters.waiting.lock() {
                            w.clear();
                        }
                    }
                    Err(e) => {
                        self.failed.store(true, Ordering::Relaxed);
                        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
                        if slot.is_none() {
                            *slot = Some(e);
                        }
                        continue;
                    }
                }
            }
            self.counters.done.fetch_add(len, Ordering::Relaxed);
            if let Ok(mut m) = self.manifest.lock() {
                m.insert(offset, (len, sha));
            }
        }
    }
}

/// The QCOW2 writer's output, cut into fixed windows for the [`Pool`].
pub struct ChunkSink<'p> {
    pool: &'p Pool,
    chunk: u64,
    /// Window 0 (holds the header cluster, written last).
    first: Vec<u8>,
    /// Start of the window being filled (never 0) and its bytes.
    cur_start: u64,
    cur: Vec<u8>,
    /// End of everything written.
    end: u64,
}

impl<'p> ChunkSink<'p> {
    /// Windows of `chunk` bytes into `pool`.
    pub fn new(pool: &'p Pool, chunk: u64) -> ChunkSink<'p> {
        ChunkSink {
            pool,
            chunk: chunk.max(1),
            first: Vec::new(),
            cur_start: chunk.max(1),
            cur: Vec::new(),
            end: 0,
        }
    }

    fn put_into(buf: &mut Vec<u8>, at: usize, data: &[u8]) {
        if buf.len() < at + data.len() {
            buf.resize(at + data.len(), 0);
        }
        buf[at..at + data.len()].copy_from_slice(data);
    }

    /// Sends the last window and window 0; returns the image's size.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.cur.is_empty() {
            let buf = std::mem::take(&mut self.cur);
            self.pool.send(self.cur_start, buf)?;
        }
        let mut first = std::mem::take(&mut self.first);
        first.resize(self.end.min(self.chunk) as usize, 0);
        if !first.is_empty() {
            self.pool.send(0, first)?;
        }
        Ok(self.end)
    }
}

impl qcow2::WriteAt for ChunkSink<'_> {
    fn write_all_at(&mut self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        self.end = self.end.max(offset + buf.len() as u64);
        while !buf.is_empty() {
            if offset < self.chunk {
                let n = ((self.chunk - offset) as usize).min(buf.len());
                Self::put_into(&mut self.first, offset as usize, &buf[..n]);
                buf = &buf[n..];
                offset += n as u64;
                continue;
            }
            if offset < self.cur_start {
                return Err(io::Error::other(format!(
                    "the image writer went back to offset {offset} after sending it (streaming contract broken)"
                )));
            }
            // Windows before `offset` are complete: send them.
            while offset >= self.cur_start + self.chunk {
                let mut full = std::mem::take(&mut self.cur);
                full.resize(self.chunk as usize, 0);
                self.pool.send(self.cur_start, full)?;
                self.cur_start += self.chunk;
            }
            let at = (offset - self.cur_start) as usize;
            let n = ((self.chunk as usize) - at).min(buf.len());
            Self::put_into(&mut self.cur, at, &buf[..n]);
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_ranges() {
        let r = |offset, length| ByteRange { offset, length };
        let h = [r(0, 10), r(20, 10)];
        assert!(is_held(&h, 0, 10));
        assert!(is_held(&h, 22, 30));
        assert!(!is_held(&h, 5, 15));
        assert!(!is_held(&h, 10, 20));
        assert!(!is_held(&h, 25, 31));
        assert!(!is_held(&[], 0, 1));
    }
}
