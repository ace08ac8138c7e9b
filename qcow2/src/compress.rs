//! Compressed clusters: qemu's raw deflate (4 KiB window) and zstd.
//!
//! Decompression always targets a buffer of exactly one cluster, so hostile
//! input can never inflate past the cluster size; like qemu, the cluster must
//! be filled completely, and trailing bytes (the next compressed cluster
//! sharing the last sector) are ignored.

use crate::error::{Error, Result};
use crate::header::CompressionType;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

/// qemu's deflate window: `deflateInit2(..., -12, ...)`.
const DEFLATE_WINDOW_BITS: u8 = 12;
/// Largest zstd window a cluster can need (2 MiB clusters), plus slack.
const ZSTD_WINDOW_LOG_MAX: u32 = 22;
/// zstd level of written clusters. On 64 KiB clusters of ext4 metadata,
/// level 4 (lazy matching) is 5% smaller than the default 3 (what qemu-img
/// uses) for about a third more compression time, which is still a small
/// part of an export; level 5 and up cost 4x and more.
pub(crate) const ZSTD_LEVEL: i32 = 4;

/// A reusable decompressor for one thread.
pub(crate) struct Decompressor {
    deflate: Decompress,
    zstd: Option<Decoder<'static>>,
}

impl Decompressor {
    pub(crate) fn new() -> Self {
        Decompressor {
            deflate: Decompress::new_with_window_bits(false, 15),
            zstd: None,
        }
    }

    /// Fills all of `out` (one cluster) from `input`; `at` is the file offset
    /// for error messages.
    pub(crate) fn decompress(
        &mut self,
        kind: CompressionType,
        input: &[u8],
        out: &mut [u8],
        at: u64,
    ) -> Result<()> {
        match kind {
            CompressionType::Zlib => {
                self.deflate.reset(false);
                let status = self
                    .deflate
                    .decompress(input, out, FlushDecompress::Finish)
                    .map_err(|e| {
                        Error::corrupt(at, format!("compressed cluster does not inflate: {e}"))
                    })?;
                let produced = self.deflate.total_out() as usize;
                if produced != out.len() {
                    return Err(Error::corrupt(
                        at,
                        format!(
                            "compressed cluster inflates to {produced} bytes instead of {} ({status:?})",
                            out.len()
                        ),
                    ));
                }
                let _ = Status::Ok;
                Ok(())
            }
            CompressionType::Zstd => {
                let dec = match &mut self.zstd {
                    Some(d) => {
                        d.reinit().map_err(|e| Error::io("resetting zstd", e))?;
                        d
                    }
                    None => {
                        let mut d =
                            Decoder::new().map_err(|e| Error::io("creating a zstd decoder", e))?;
                        d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                            .map_err(|e| Error::io("configuring zstd", e))?;
                        self.zstd.insert(d)
                    }
                };
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(out);
                let cap = outb.capacity();
                let mut last = 1;
                while outb.pos() < cap {
                    let (ip, op) = (inb.pos(), outb.pos());
                    last = dec.run(&mut inb, &mut outb).map_err(|e| {
                        Error::corrupt(at, format!("compressed cluster is not valid zstd: {e}"))
                    })?;
                    if inb.pos() == ip && outb.pos() == op {
                        break;
                    }
                    if last == 0 {
                        break;
                    }
                }
                if outb.pos() != cap {
                    return Err(Error::corrupt(
                        at,
                        format!(
                            "compressed cluster inflates to {} bytes instead of {cap}",
                            outb.pos()
                        ),
                    ));
                }
                let _ = last;
                Ok(())
            }
        }
    }
}

/// A reusable compressor for one thread.
pub(crate) enum Compressor {
    Zlib(Compress),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Compressor {
    pub(crate) fn new(kind: CompressionType) -> Result<Self> {
        Ok(match kind {
            CompressionType::Zlib => Compressor::Zlib(Compress::new_with_window_bits(
                flate2::Compression::default(),
                false,
                DEFLATE_WINDOW_BITS,
            )),
            CompressionType::Zstd => Compressor::Zstd(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| Error::io("creating a zstd compressor", e))?,
            ),
        })
    }

    /// Compresses one cluster into `out`; returns `false` when the result
    /// would not be smaller than the input (store the cluster uncompressed).
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        // Anything at least as long as the cluster is useless.
        out.reserve(input.len());
        let limit = input.len().saturating_sub(1);
        match self {
            Compressor::Zlib(c) => {
                c.reset();
                // Room for deflate's worst case: a too-small output buffer
                // trips an assertion in zlib-rs.
                out.resize(input.len() + input.len() / 8 + 1024, 0);
                match c.compress(input, out, FlushCompress::Finish) {
                    Ok(Status::StreamEnd) if (c.total_out() as usize) <= limit => {
                        out.truncate(c.total_out() as usize);
                        true
                    }
                    _ => false,
                }
            }
            Compressor::Zstd(c) => {
                // Into the spare capacity: no zeroing of a cluster-sized
                // buffer per cluster. A result over `limit` (the capacity
                // may be larger) is as useless as a failure.
                match c.compress_to_buffer(input, out) {
                    Ok(n) => n <= limit,
                    Err(_) => false,
                }
            }
        }
    }
}
