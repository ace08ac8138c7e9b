//! A bounded, thread-safe cache of fixed-size blocks of immutable objects,
//! for the positioned reads the QCOW2 reader makes through object storage:
//! a miss fetches whole aligned blocks (contiguous misses in one request),
//! least recently used blocks are dropped beyond the capacity, and a block
//! being fetched by one thread is waited for, not fetched again, by others.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A block: the object's name and the block's index in it.
type Key = (Arc<str>, u64);

struct Entry {
    data: Bytes,
    tick: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<Key, Entry>,
    /// Ticks of last use to keys: the first is the least recently used.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    /// Blocks being fetched by some thread.
    inflight: HashSet<Key>,
}

impl State {
    fn touch(&mut self, key: &Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.map.get_mut(key)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, key.clone());
        Some(e.data.clone())
    }

    fn insert(&mut self, key: Key, data: Bytes, capacity: usize) {
        if data.len() > capacity {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        self.bytes += data.len();
        if let Some(old) = self.map.insert(key.clone(), Entry { data, tick }) {
            self.lru.remove(&old.tick);
            self.bytes -= old.data.len();
        }
        self.lru.insert(tick, key);
        while self.bytes > capacity {
            let Some((_, k)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&k) {
                self.bytes -= e.data.len();
            }
        }
    }
}

/// Counters of a [`BlockCache`].
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Blocks served from memory.
    pub hits: AtomicU64,
    /// Blocks fetched.
    pub misses: AtomicU64,
}

/// Blocks a thread has promised to fetch; released (and waiters woken)
/// on drop.
struct Claims<'a> {
    cache: &'a BlockCache,
    name: &'a Arc<str>,
    blocks: Vec<u64>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        let mut s = self.cache.lock();
        for &b in &self.blocks {
            s.inflight.remove(&(self.name.clone(), b));
        }
        drop(s);
        self.cache.done.notify_all();
    }
}

/// See the module documentation.
pub struct BlockCache {
    block: u64,
    capacity: usize,
    state: Mutex<State>,
    done: Condvar,
    /// Hits and misses.
    pub stats: CacheStats,
}

impl BlockCache {
    /// A cache of `block`-byte blocks holding at most `capacity` bytes
    /// (0: nothing is kept, every read fetches).
    pub fn new(block: u64, capacity: usize) -> BlockCache {
        BlockCache {
            block: block.max(1),
            capacity,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            stats: CacheStats::default(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every block of `name` (a deleted object).
    pub fn evict(&self, name: &str) {
        let mut s = self.lock();
        let keys: Vec<Key> = s.map.keys().filter(|k| &*k.0 == name).cloned().collect();
        for k in keys {
            if let Some(e) = s.map.remove(&k) {
                s.lru.remove(&e.tick);
                s.bytes -= e.data.len();
            }
        }
    }

    /// Fills `buf` from `offset` of the object `name` of `size` bytes;
    /// `fetch` gets a byte range of the object (block-aligned, within
    /// `size`) and must return exactly that many bytes. Up to `ahead` bytes
    /// of blocks after the read that nobody holds or fetches are fetched in
    /// the same request (read-ahead for sequential readers).
    pub fn read(
        &self,
        name: &Arc<str>,
        size: u64,
        buf: &mut [u8],
        offset: u64,
        ahead: u64,
        fetch: &dyn Fn(Range<u64>) -> io::Result<Bytes>,
    ) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end of a {size}-byte object",
                        buf.len()
                    ),
                )
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / self.block;
        let last = (end - 1) / self.block;
        let mut pending: Vec<u64> = (first..=last).collect();
        let mut ahead_blocks = ahead.div_ceil(self.block);
        while !pending.is_empty() {
            // Under the lock: take what is cached, claim what nobody fetches.
            let mut claims = Claims {
                cache: self,
                name,
                blocks: Vec::new(),
            };
            let mut hits: Vec<(u64, Bytes)> = Vec::new();
            let mut waiting: Vec<u64> = Vec::new();
            {
                let mut s = self.lock();
                for &b in &pending {
                    let key = (name.clone(), b);
                    if let Some(data) = s.touch(&key) {
                        hits.push((b, data));
                    } else if s.inflight.contains(&key) {
                        waiting.push(b);
                    } else {
                        s.inflight.insert(key);
                        claims.blocks.push(b);
                    }
                }
                // Read-ahead: the following blocks up to the first one held
                // or being fetched, within the object.
                let blocks = size.div_ceil(self.block);
                let mut b = last + 1;
                while ahead_blocks > 0 && b < blocks {
                    let key = (name.clone(), b);
                    if s.map.contains_key(&key) || s.inflight.contains(&key) {
                        break;
                    }
                    s.inflight.insert(key);
                    claims.blocks.push(b);
                    ahead_blocks -= 1;
                    b += 1;
                }
                ahead_blocks = 0;
            }
            self.stats.hits.fetch_add(hits.len() as u64, Relaxed);
            for (b, data) in &hits {
                self.copy_out(*b, data, buf, offset)?;
            }
            // Contiguous claimed blocks in one request each; the claims are
            // released when `claims` drops, whatever happens.
            self.fetch_runs(name, size, &claims.blocks, buf, offset, fetch)?;
            drop(claims);
            // Wait for the blocks others fetch, then look again (they may
            // have failed or been evicted meanwhile: then we claim them).
            if !waiting.is_empty() {
                let mut s = self.lock();
                while waiting
                    .iter()
                    .any(|&b| s.inflight.contains(&(name.clone(), b)))
                {
                    s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
            pending = waiting;
        }
        Ok(())
    }

    fn fetch_runs(
        &self,
        name: &Arc<str>,
        size: u64,
        claimed: &[u64],
        buf: &mut [u8],
        offset: u64,
        fetch: &dyn Fn(Range<u64>) -> io::Result<Bytes>,
    ) -> io::Result<()> {
        let mut i = 0;
        while i < claimed.len() {
            let mut j = i + 1;
            while j < claimed.len() && claimed[j] == claimed[j - 1] + 1 {
                j += 1;
            }
            let start = claimed[i] * self.block;
            let stop = (claimed[j - 1] + 1).saturating_mul(self.block).min(size);
            let data = fetch(start..stop)?;
            if data.len() as u64 != stop - start {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "object storage returned {} bytes for the range [{start}, {stop})",
                        data.len()
                    ),
                ));
            }
            self.stats.misses.fetch_add((j - i) as u64, Relaxed);
            let mut s = self.lock();
            for &b in &claimed[i..j] {
                let from = ((b * self.block) - start) as usize;
                let to = (from + self.block as usize).min(data.len());
                // A copy per block, so an evicted block frees its memory
                // even while its neighbours stay.
                let block = Bytes::copy_from_slice(&data[from..to]);
                if b * self.block < offset + buf.len() as u64 {
                    self.copy_out(b, &block, buf, offset)?;
                }
                s.insert((name.clone(), b), block, self.capacity);
            }
            i = j;
        }
        Ok(())
    }

    /// Copies the part of block `b` that falls into the read.
    fn copy_out(&self, b: u64, data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bstart = b * self.block;
        let bend = bstart + data.len() as u64;
        let end = offset + buf.len() as u64;
        let s = bstart.max(offset);
        let e = bend.min(end);
        if s >= e {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a cached block is shorter than the read needs",
            ));
        }
        let src = &data[(s - bstart) as usize..(e - bstart) as usize];
        buf[(s - offset) as usize..(e - offset) as usize].copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn object(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A fetch over `data` that counts requests and bytes.
    fn fetcher<'a>(
        data: &'a [u8],
        requests: &'a AtomicUsize,
        bytes: &'a AtomicUsize,
    ) -> impl Fn(Range<u64>) -> io::Result<Bytes> + 'a {
        move |r: Range<u64>| {
            requests.fetch_add(1, Relaxed);
            bytes.fetch_add((r.end - r.start) as usize, Relaxed);
            Ok(Bytes::copy_from_slice(
                &data[r.start as usize..r.end as usize],
            ))
        }
    }

    #[test]
    fn reads_equal_the_object_and_hits_fetch_nothing() {
        let data = object(10_000);
        let (req, by) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let f = fetcher(&data, &req, &by);
        let c = BlockCache::new(1000, 1 << 20);
        let name: Arc<str> = "a".into();
        for (off, len) in [(0, 1), (999, 2), (1500, 3000), (9990, 10), (0, 10_000)] {
            let mut buf = vec![0u8; len];
            c.read(&name, 10_000, &mut buf, off as u64, 0, &f).unwrap();
            assert_eq!(buf, &data[off..off + len], "at {off}+{len}");
        }
        // Everything is cached now: one more whole read fetches nothing.
        let before = req.load(Relaxed);
        let mut buf = vec![0u8; 10_000];
        c.read(&name, 10_000, &mut buf, 0, 0, &f).unwrap();
        assert_eq!(req.load(Relaxed), before);
        assert_eq!(by.load(Relaxed), 10_000, "each byte fetched once");
        // Contiguous misses went out as one request: [0,1000) [0,2000)->
        // only block 1 new, [1000..5000) blocks 2-4 in one run, block 9,
        // then blocks 5-8 in one run.
        assert_eq!(req.load(Relaxed), 5);
    }

    #[test]
    fn past_the_end_is_an_error_not_a_panic() {
        let data = object(100);
        let (req, by) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let f = fetcher(&data, &req, &by);
        let c = BlockCache::new(64, 1024);
        let name: Arc<str> = "a".into();
        let mut buf = [0u8; 10];
        let e = c.read(&name, 100, &mut buf, 95, 0, &f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(c.read(&name, 100, &mut buf, u64::MAX - 3, 0, &f).is_err());
        assert_eq!(req.load(Relaxed), 0);
        // A store that returns short data is an error too.
        let short = |_r: Range<u64>| Ok(Bytes::from_static(b"xy"));
        assert!(c.read(&name, 100, &mut buf, 0, 0, &short).is_err());
        // Errors from the store pass through and leave nothing claimed.
        let failing = |_r: Range<u64>| Err(io::Error::other("down"));
        assert!(c.read(&name, 100, &mut buf, 0, 0, &failing).is_err());
        c.read(&name, 100, &mut buf, 0, 0, &f).unwrap();
        assert_eq!(&buf, &data[..10]);
    }

    #[test]
    fn memory_stays_within_capacity_least_recently_used_go_first() {
        let data = object(100_000);
        let (req, by) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let f = fetcher(&data, &req, &by);
        let c = BlockCache::new(1000, 5000);
        let name: Arc<str> = "a".into();
        let mut buf = vec![0u8; 1];
        for b in 0..100u64 {
            c.read(&name, 100_000, &mut buf, b * 1000, 0, &f).unwrap();
            assert!(c.bytes() <= 5000, "{} bytes held", c.bytes());
        }
        assert_eq!(c.bytes(), 5000);
        // Blocks 95-99 are held; touch 95, read 90: 96 goes, 95 stays.
        let n = req.load(Relaxed);
        c.read(&name, 100_000, &mut buf, 95_000, 0, &f).unwrap();
        assert_eq!(req.load(Relaxed), n);
        c.read(&name, 100_000, &mut buf, 90_000, 0, &f).unwrap();
        assert_eq!(req.load(Relaxed), n + 1);
        c.read(&name, 100_000, &mut buf, 95_000, 0, &f).unwrap();
        assert_eq!(req.load(Relaxed), n + 1);
        c.read(&name, 100_000, &mut buf, 96_000, 0, &f).unwrap();
        assert_eq!(req.load(Relaxed), n + 2);
        // A read larger than the cache still returns the right bytes.
        let mut big = vec![0u8; 50_000];
        c.read(&name, 100_000, &mut big, 25_500, 0, &f).unwrap();
        assert_eq!(big, &data[25_500..75_500]);
        assert!(c.bytes() <= 5000);
        // Eviction by name.
        c.evict("a");
        assert_eq!(c.bytes(), 0);
        // Capacity 0 keeps nothing.
        let none = BlockCache::new(1000, 0);
        none.read(&name, 100_000, &mut buf, 0, 0, &f).unwrap();
        assert_eq!(none.bytes(), 0);
    }

    #[test]
    fn read_ahead_brings_following_blocks_in_the_same_request() {
        let data = object(10_500);
        let (req, by) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let f = fetcher(&data, &req, &by);
        let c = BlockCache::new(1000, 1 << 20);
        let name: Arc<str> = "a".into();
        let mut buf = vec![0u8; 10];
        c.read(&name, 10_500, &mut buf, 995, 2500, &f).unwrap();
        assert_eq!(buf, &data[995..1005]);
        // Blocks 0-1 for the read, 2-4 ahead: one request.
        assert_eq!((req.load(Relaxed), by.load(Relaxed)), (1, 5000));
        c.read(&name, 10_500, &mut buf, 4990, 0, &f).unwrap();
        assert_eq!(buf, &data[4990..5000]);
        assert_eq!(req.load(Relaxed), 1);
        // Read-ahead stops at a held block and at the end of the object.
        c.read(&name, 10_500, &mut buf, 5000, 1_000_000, &f)
            .unwrap();
        assert_eq!((req.load(Relaxed), by.load(Relaxed)), (2, 10_500));
        let mut tail = vec![0u8; 5500];
        c.read(&name, 10_500, &mut tail, 5000, 1_000_000, &f)
            .unwrap();
        assert_eq!(tail, &data[5000..]);
        assert_eq!(req.load(Relaxed), 2);
    }

    #[test]
    fn threads_share_blocks_and_fetch_each_once() {
        let data = Arc::new(object(64 * 4096));
        let req = Arc::new(AtomicUsize::new(0));
        let c = Arc::new(BlockCache::new(4096, 1 << 20));
        let name: Arc<str> = "obj".into();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (data, req, c, name) = (data.clone(), req.clone(), c.clone(), name.clone());
                std::thread::spawn(move || {
                    let f = |r: Range<u64>| {
                        req.fetch_add(1, Relaxed);
                        // Slow enough that threads meet on the same blocks.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        Ok(Bytes::copy_from_slice(
                            &data[r.start as usize..r.end as usize],
                        ))
                    };
                    let mut seed = t as u64 + 1;
                    for _ in 0..200 {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let off = (seed >> 20) % (data.len() as u64 - 5000);
                        let len = ((seed >> 8) % 5000) as usize + 1;
                        let mut buf = vec![0u8; len];
                        c.read(
                            &name,
                            data.len() as u64,
                            &mut buf,
                            off,
                            (seed % 3) * 4096,
                            &f,
                        )
                        .unwrap();
                        assert_eq!(buf, &data[off as usize..off as usize + len]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The cache holds the whole object, so each block was fetched by
        // exactly one thread: at most 64 requests (runs may merge blocks).
        assert!(req.load(Relaxed) <= 64, "{} requests", req.load(Relaxed));
        assert_eq!(c.stats.misses.load(Relaxed), 64);
    }
}
