//! Small driver for manual experiments: `convert IN OUT|-`, `check IN`,
//! `write RAW OUT.qcow2 [cluster_size] [none|zlib|zstd]`, `map IN`.

use std::fs::{File, OpenOptions};
use std::io::Read;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("convert") => {
            let img = qcow2::Image::open(File::open(&a[2])?)?;
            if a[3] == "-" {
                qcow2::convert::to_raw_stream(&img, std::io::stdout().lock())?;
            } else {
                let out = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&a[3])?;
                let s = qcow2::convert::to_raw(&img, &out)?;
                eprintln!("{s:?}");
            }
        }
        Some("check") => {
            let r = qcow2::check(File::open(&a[2])?)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Some("map") => {
            let img = qcow2::Image::open(File::open(&a[2])?)?;
            for e in img.map(0, img.virtual_size())? {
                println!("{:#x} {:#x} {:?}", e.offset, e.len, e.kind);
            }
        }
        Some("write") => {
            let mut raw = File::open(&a[2])?;
            let size = raw.metadata()?.len();
            let cs = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(65536);
            let compression = match a.get(5).map(String::as_str) {
                Some("none") => qcow2::Compression::None,
                Some("zlib") => qcow2::Compression::Zlib,
                _ => qcow2::Compression::Zstd,
            };
            let out = File::create(&a[3])?;
            let mut w = qcow2::Writer::new(
                out,
                size,
                qcow2::WriterOptions {
                    cluster_size: cs,
                    compression,
                },
            )?;
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            loop {
                let n = raw.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_at(pos, &buf[..n])?;
                pos += n as u64;
            }
            eprintln!("{:?}", w.progress());
            w.finish()?;
        }
        _ => eprintln!("usage: qcow2-tool convert|check|map|write ..."),
    }
    Ok(())
}
