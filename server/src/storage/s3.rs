//! Images in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage...),
//! through the `object_store` crate. Nothing is kept on local disk and no
//! state lives in the process, so chunks of one upload may reach different
//! server processes:
//!
//! - `<prefix>/uploads/<id>/<offset>-<length>-<sha256>`: one object per
//!   acknowledged chunk (offset zero-padded to 20 digits, so listings sort
//!   by offset). The name says what the database records of the chunk, so
//!   a re-sent chunk overwrites its own object with equal bytes, and an
//!   object written by a request that died before its database row is
//!   never read;
//! - `<prefix>/images/<id>.qcow2`: the image, composed at completion with a
//!   multipart upload from the chunk objects, streamed in order (parts of at
//!   least 8 MiB, a few in flight), hashed on the way. It is only read once
//!   the database says the upload is complete, so an object of an upload
//!   that failed verification is harmless (and deleted).
//!
//! Reads of images ([`ImageStore::open_image`]) are ranged GETs through a
//! [`BlockCache`] shared by all readers of the process, so analysing a large
//! image transfers only the blocks the analysis touches.
//!
//! The trait is synchronous and called on blocking threads; the async
//! client is driven there with the runtime's [`Handle::block_on`].

use super::{check_id, tiling, BlockCache, Chunk, ImageReader, ImageStore, Sink};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};
use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::runtime::Handle;

/// Size of the cache blocks: one GET brings at least this much.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Largest read-ahead of a sequential reader (downloads, conversion): one
/// GET brings up to this much more than asked.
pub const READ_AHEAD: u64 = 8 << 20;

/// How long a request to the object storage is retried.
const RETRY_SECS: u64 = 30;

/// Smallest multipart part (S3 requires 5 MiB for all but the last).
const MIN_PART: u64 = 8 << 20;

/// S3 allows at most this many parts per multipart upload.
const MAX_PARTS: u64 = 10_000;

/// Parts uploaded at the same time while composing an image.
const PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach the bucket. Credentials come from the standard
/// AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, or the instance/container role).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name (must exist).
    pub bucket: String,
    /// Endpoint URL of an S3-compatible service; AWS when `None`.
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when `None` and not in `AWS_REGION`.
    pub region: Option<String>,
    /// Key prefix (no leading or trailing `/`), empty for none.
    pub prefix: String,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Bytes the read cache may hold.
    pub cache_bytes: u64,
}

/// Counters of the traffic with the bucket.
#[derive(Debug, Default)]
pub struct S3Stats {
    /// GET requests (ranged or whole).
    pub get_requests: AtomicU64,
    /// Bytes received in GET responses.
    pub read_bytes: AtomicU64,
    /// Of which for reads of stored images (analyses, conversion,
    /// downloads), as opposed to chunks at completion.
    pub image_read_bytes: AtomicU64,
    /// PUT requests and multipart parts.
    pub put_requests: AtomicU64,
    /// Bytes sent in PUTs and parts.
    pub written_bytes: AtomicU64,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    handle: Handle,
    prefix: String,
    cache: BlockCache,
    stats: S3Stats,
}

/// See the module documentation.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

fn s3_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(super::Unavailable(other.to_string())),
    }
}

impl S3Store {
    /// Connects and checks that the bucket can be listed, so a wrong
    /// bucket, endpoint or credentials stop the server at start.
    pub async fn connect(cfg: &S3Config) -> anyhow::Result<S3Store> {
        anyhow::ensure!(
            !cfg.bucket.is_empty(),
            "storage is s3 but no bucket is configured: set s3_bucket (SUPPORT_S3_BUCKET)"
        );
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if cfg.allow_http {
            b = b.with_allow_http(true);
        }
        // Retry transient failures for a while, but answer (503) well
        // within a client's patience when the store is down.
        b = b.with_retry(object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(RETRY_SECS),
            ..Default::default()
        });
        let store = b.build().map_err(|e| {
            anyhow::anyhow!("cannot configure S3 storage for bucket {}: {e}", cfg.bucket)
        })?;
        let s = S3Store::from_store(Arc::new(store), &cfg.prefix, cfg.cache_bytes);
        let probe = s.path("images");
        let mut list = s.inner.store.list(Some(&probe));
        if let Some(Err(e)) = list.next().await {
            anyhow::bail!(
                "cannot reach bucket {} ({}): {e}; check s3_endpoint, s3_region and the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment",
                cfg.bucket,
                cfg.endpoint.as_deref().unwrap_or("AWS")
            );
        }
        Ok(s)
    }

    /// A store over any `object_store` backend (tests use the in-memory
    /// one). Must be called inside a Tokio runtime.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, cache_bytes: u64) -> S3Store {
        S3Store {
            inner: Arc::new(Inner {
                store,
                handle: Handle::current(),
                prefix: prefix.trim_matches('/').to_string(),
                cache: BlockCache::new(
                    BLOCK_SIZE,
                    usize::try_from(cache_bytes).unwrap_or(usize::MAX),
                ),
                stats: S3Stats::default(),
            }),
        }
    }

    /// Traffic counters.
    pub fn stats(&self) -> &S3Stats {
        &self.inner.stats
    }

    fn path(&self, rest: &str) -> Path {
        if self.inner.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.inner.prefix))
        }
    }

    fn upload_dir(&self, id: &str) -> io::Result<Path> {
        check_id(id)?;
        Ok(self.path(&format!("uploads/{id}")))
    }

    fn chunk_path(&self, id: &str, c: &Chunk) -> io::Result<Path> {
        check_id(id)?;
        if !super::upload_sha_ok(&c.sha256) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid chunk checksum",
            ));
        }
        Ok(self.path(&format!(
            "uploads/{id}/{:020}-{}-{}",
            c.offset, c.length, c.sha256
        )))
    }

    fn image_path(&self, id: &str) -> io::Result<Path> {
        check_id(id)?;
        Ok(self.path(&format!("images/{id}.qcow2")))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.handle.block_on(f)
    }
}

impl Inner {
    async fn get_range(&self, path: &Path, range: Range<u64>) -> io::Result<Bytes> {
        self.stats.get_requests.fetch_add(1, Relaxed);
        let want = range.end - range.start;
        let data = self.store.get_range(path, range).await.map_err(s3_error)?;
        self.stats.read_bytes.fetch_add(data.len() as u64, Relaxed);
        if data.len() as u64 != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{path} returned {} bytes where {want} were asked for",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    async fn put(&self, path: &Path, data: Bytes) -> io::Result<()> {
        self.stats.put_requests.fetch_add(1, Relaxed);
        self.stats
            .written_bytes
            .fetch_add(data.len() as u64, Relaxed);
        self.store
            .put(path, PutPayload::from(data))
            .await
            .map_err(s3_error)?;
        Ok(())
    }
}

/// Part size for an image of `size` bytes: at least [`MIN_PART`], and
/// large enough to stay within [`MAX_PARTS`], in whole MiB.
fn part_size(size: u64) -> usize {
    let need = size.div_ceil(MAX_PARTS).max(MIN_PART);
    usize::try_from(need.div_ceil(1 << 20) << 20).unwrap_or(usize::MAX)
}

impl ImageStore for S3Store {
    fn create_upload(&self, id: &str, _size: u64) -> io::Result<()> {
        // Nothing to prepare: chunks are objects of their own.
        check_id(id)
    }

    fn write_chunk(&self, id: &str, chunk: &Chunk, data: &[u8]) -> io::Result<()> {
        let path = self.chunk_path(id, chunk)?;
        if data.len() as u64 != chunk.length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk length differs from its data",
            ));
        }
        let data = Bytes::copy_from_slice(data);
        // A PUT is durable once acknowledged.
        self.block_on(self.inner.put(&path, data))
    }

    fn read_chunk(&self, id: &str, chunk: &Chunk, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let path = self.chunk_path(id, chunk)?;
        let start = offset
            .checked_sub(chunk.offset)
            .filter(|s| s + buf.len() as u64 <= chunk.length)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read outside the chunk"))?;
        if buf.is_empty() {
            return Ok(());
        }
        let data = self.block_on(self.inner.get_range(&path, start..start + buf.len() as u64))?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn assemble(&self, id: &str, chunks: &[Chunk], size: u64, sink: Sink<'_>) -> io::Result<()> {
        let pieces = tiling(chunks, size)?;
        let mut named = Vec::with_capacity(pieces.len());
        for (c, s, e) in pieces {
            named.push((self.chunk_path(id, c)?, s - c.offset, e - c.offset));
        }
        let target = self.image_path(id)?;
        let inner = &self.inner;
        self.block_on(async move {
            let upload = inner.store.put_multipart(&target).await.map_err(s3_error)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, part_size(size));
            let streamed = async {
                for (path, start, end) in &named {
                    inner.stats.get_requests.fetch_add(1, Relaxed);
                    let opts = GetOptions {
                        range: Some(GetRange::Bounded(*start..*end)),
                        ..Default::default()
                    };
                    let mut body = inner
                        .store
                        .get_opts(path, opts)
                        .await
                        .map_err(s3_error)?
                        .into_stream();
                    let mut got = 0u64;
                    while let Some(piece) = body.try_next().await.map_err(s3_error)? {
                        got += piece.len() as u64;
                        if got > end - start {
                            break;
                        }
                        inner
                            .stats
                            .read_bytes
                            .fetch_add(piece.len() as u64, Relaxed);
                        sink(&piece);
                        // Back pressure: at most a few parts in memory.
                        w.wait_for_capacity(PARTS_IN_FLIGHT)
                            .await
                            .map_err(s3_error)?;
                        inner
                            .stats
                            .written_bytes
                            .fetch_add(piece.len() as u64, Relaxed);
                        w.put(piece);
                    }
                    if got != end - start {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{path} holds other than the {} bytes recorded", end - start),
                        ));
                    }
                }
                Ok::<(), io::Error>(())
            }
            .await;
            match streamed {
                Ok(()) => {
                    inner
                        .stats
                        .put_requests
                        .fetch_add(size.div_ceil(part_size(size) as u64), Relaxed);
                    w.finish().await.map_err(s3_error)?;
                    Ok(())
                }
                Err(e) => {
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
    }

    fn finalize(&self, id: &str) -> io::Result<()> {
        // The composed object is the image; the database makes it visible.
        check_id(id)
    }

    fn discard_assembly(&self, id: &str) -> io::Result<()> {
        self.delete_image(id)
    }

    fn delete_upload(&self, id: &str) -> io::Result<()> {
        let dir = self.upload_dir(id)?;
        let store = &self.inner.store;
        self.block_on(async move {
            // Listing also finds objects of chunks whose row never made it.
            let names = store.list(Some(&dir)).map_ok(|m| m.location).boxed();
            store
                .delete_stream(names)
                .try_for_each(|_| async { Ok(()) })
                .await
                .or_else(|e| match e {
                    object_store::Error::NotFound { .. } => Ok(()),
                    other => Err(s3_error(other)),
                })
        })
    }

    fn open_image(&self, id: &str) -> io::Result<ImageReader> {
        let path = self.image_path(id)?;
        let meta = self
            .block_on(self.inner.store.head(&path))
            .map_err(s3_error)?;
        Ok(Arc::new(S3Reader {
            store: self.clone(),
            name: Arc::from(path.as_ref()),
            path,
            size: meta.size,
            next: AtomicU64::new(u64::MAX),
            streak: AtomicU64::new(0),
        }))
    }

    fn delete_image(&self, id: &str) -> io::Result<()> {
        let path = self.image_path(id)?;
        self.inner.cache.evict(path.as_ref());
        match self.block_on(self.inner.store.delete(&path)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }

    fn backend(&self) -> &'static str {
        "s3"
    }

    fn render_metrics(&self, out: &mut String) {
        let s = &self.inner.stats;
        let c = &self.inner.cache.stats;
        let counters: [(&str, &str, u64); 7] = [
            (
                "support_s3_get_requests_total",
                "GET requests sent to object storage.",
                s.get_requests.load(Relaxed),
            ),
            (
                "support_s3_read_bytes_total",
                "Bytes received from object storage.",
                s.read_bytes.load(Relaxed),
            ),
            (
                "support_s3_image_read_bytes_total",
                "Bytes received from object storage for reads of stored images (analyses, conversion, downloads).",
                s.image_read_bytes.load(Relaxed),
            ),
            (
                "support_s3_put_requests_total",
                "PUT requests and multipart parts sent to object storage.",
                s.put_requests.load(Relaxed),
            ),
            (
                "support_s3_written_bytes_total",
                "Bytes sent to object storage.",
                s.written_bytes.load(Relaxed),
            ),
            (
                "support_s3_cache_hits_total",
                "Image blocks served from the read cache.",
                c.hits.load(Relaxed),
            ),
            (
                "support_s3_cache_misses_total",
                "Image blocks fetched from object storage.",
                c.misses.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "support_s3_cache_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes held by the read cache.\n# TYPE {name} gauge\n{name} {}",
            self.inner.cache.bytes()
        );
    }
}

/// Positioned reads of one image object through the shared block cache.
struct S3Reader {
    store: S3Store,
    name: Arc<str>,
    path: Path,
    size: u64,
    /// Where a sequential reader reads next, and how many bytes it has
    /// read contiguously.
    next: AtomicU64,
    streak: AtomicU64,
}

impl qcow2::ReadAt for S3Reader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = &self.store.inner;
        let fetch = |r: Range<u64>| -> io::Result<Bytes> {
            let data = inner.handle.block_on(inner.get_range(&self.path, r))?;
            inner
                .stats
                .image_read_bytes
                .fetch_add(data.len() as u64, Relaxed);
            Ok(data)
        };
        // Read-ahead only for a reader that has read at least a block
        // contiguously (downloads, conversion), as much as it has read so
        // far, up to READ_AHEAD; scattered reads (analyses) fetch only the
        // blocks they touch.
        let len = buf.len() as u64;
        let sequential = self.next.swap(offset.saturating_add(len), Relaxed) == offset;
        let streak = if sequential {
            self.streak.fetch_add(len, Relaxed).saturating_add(len)
        } else {
            self.streak.store(len, Relaxed);
            len
        };
        let ahead = if streak >= BLOCK_SIZE {
            streak.min(READ_AHEAD)
        } else {
            0
        };
        inner
            .cache
            .read(&self.name, self.size, buf, offset, ahead, &fetch)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn chunk(offset: u64, data: &[u8]) -> Chunk {
        Chunk {
            offset,
            length: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    #[test]
    fn part_sizes_respect_s3_limits() {
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(10 << 30), 8 << 20);
        let tib = 1u64 << 40;
        let p = part_size(tib) as u64;
        assert!(tib.div_ceil(p) <= MAX_PARTS);
        assert_eq!(p % (1 << 20), 0);
    }

    /// The whole store over `object_store`'s in-memory backend: chunks out
    /// of order with an overlap, assembly equal to the bytes, reads through
    /// the cache, deletion.
    #[test]
    fn upload_assemble_read_delete_in_memory() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let s = rt.block_on(async { S3Store::from_store(mem.clone(), "pre/fix/", 64 << 20) });
        let data: Vec<u8> = (0..(20u32 << 20) + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let id = "00112233445566778899aabbccddeeff";
        s.create_upload(id, data.len() as u64).unwrap();
        let cut = [0usize, 3 << 20, 9 << 20, 9 << 20 | 77, data.len()];
        let mut chunks = Vec::new();
        for w in cut.windows(2).rev() {
            let c = chunk(w[0] as u64, &data[w[0]..w[1]]);
            s.write_chunk(id, &c, &data[w[0]..w[1]]).unwrap();
            chunks.push(c);
        }
        // An overlapping re-send covering [2 MiB, 4 MiB).
        let o = chunk(2 << 20, &data[2 << 20..4 << 20]);
        s.write_chunk(id, &o, &data[2 << 20..4 << 20]).unwrap();
        chunks.push(o.clone());
        let mut held = vec![0u8; 1000];
        s.read_chunk(id, &o, (3 << 20) - 10, &mut held).unwrap();
        assert_eq!(held, &data[(3 << 20) - 10..(3 << 20) + 990]);
        assert!(s.read_chunk(id, &o, 0, &mut held).is_err());

        let mut h = Sha256::new();
        let mut n = 0usize;
        s.assemble(id, &chunks, data.len() as u64, &mut |b: &[u8]| {
            h.update(b);
            n += b.len();
        })
        .unwrap();
        assert_eq!(n, data.len());
        assert_eq!(h.finalize().as_slice(), Sha256::digest(&data).as_slice());
        s.finalize(id).unwrap();
        s.delete_upload(id).unwrap();
        let names = |prefix: &str| -> Vec<String> {
            rt.block_on(async {
                mem.list(Some(&Path::from(prefix)))
                    .map_ok(|m| m.location.to_string())
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap()
            })
        };
        assert!(names("pre/fix/uploads").is_empty());
        assert_eq!(
            names("pre/fix/images"),
            vec![format!("pre/fix/images/{id}.qcow2")]
        );

        let r = s.open_image(id).unwrap();
        assert_eq!(r.size().unwrap(), data.len() as u64);
        let before = s.stats().read_bytes.load(Relaxed);
        for (off, len) in [
            (0u64, 10usize),
            (1 << 20, 5 << 20),
            (5, 100),
            (data.len() as u64 - 7, 7),
        ] {
            let mut buf = vec![0u8; len];
            r.read_exact_at(&mut buf, off).unwrap();
            assert_eq!(buf, &data[off as usize..off as usize + len], "at {off}");
        }
        let mut buf = [0u8; 8];
        assert!(r.read_exact_at(&mut buf, data.len() as u64 - 7).is_err());
        // Blocks 0-5, 5 MiB read-ahead after the 5 MiB read, and the short
        // last block, once each: not the 20 MiB.
        let fetched = s.stats().read_bytes.load(Relaxed) - before;
        assert_eq!(fetched, (11 << 20) + 12345);
        assert_eq!(s.stats().image_read_bytes.load(Relaxed), fetched);

        s.delete_image(id).unwrap();
        s.delete_image(id).unwrap();
        assert!(names("pre/fix").is_empty());
        assert!(s.open_image(id).is_err());
        assert!(s.write_chunk("../x", &o, b"").is_err());
    }

    #[test]
    fn sequential_reads_grow_their_requests() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let s = rt.block_on(async { S3Store::from_store(mem.clone(), "", 64 << 20) });
        let id = "00112233445566778899aabbccddeeff";
        let data: Vec<u8> = (0..(40u32 << 20) + 5).map(|i| (i / 7) as u8).collect();
        let path = s.image_path(id).unwrap();
        rt.block_on(mem.put(&path, PutPayload::from(data.clone())))
            .unwrap();
        let r = s.open_image(id).unwrap();
        let mut pos = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        while pos < data.len() {
            let n = buf.len().min(data.len() - pos);
            r.read_exact_at(&mut buf[..n], pos as u64).unwrap();
            assert!(buf[..n] == data[pos..pos + n], "at {pos}");
            pos += n;
        }
        // 1 MiB, then 1 + 1, 2, 4, 8, 8... MiB a request: a handful, not 40
        // or 640.
        let gets = s.stats().get_requests.load(Relaxed);
        assert!(gets <= 9, "{gets} requests");
        assert_eq!(s.stats().read_bytes.load(Relaxed), data.len() as u64);
    }

    #[test]
    fn a_gap_or_a_short_object_fails_and_leaves_no_image() {
        let e = s3_error(object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        });
        assert!(super::super::is_unavailable(&e));
        assert!(!super::super::is_unavailable(&io::Error::other("x")));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let s = rt.block_on(async { S3Store::from_store(mem.clone(), "", 0) });
        let id = "00112233445566778899aabbccddeeff";
        let a = chunk(0, b"hello");
        s.write_chunk(id, &a, b"hello").unwrap();
        assert!(s
            .assemble(id, std::slice::from_ref(&a), 6, &mut |_: &[u8]| {})
            .is_err());
        // A row claiming more bytes than its object holds.
        let mut long = a.clone();
        long.length = 6;
        assert!(s.assemble(id, &[long], 6, &mut |_: &[u8]| {}).is_err());
        assert!(s.open_image(id).is_err());
    }
}
