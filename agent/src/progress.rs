//! What a person sees while `collect`/`upload` run: a bar with bytes, rate
//! and ETA on a terminal; a plain line every few seconds otherwise; nothing
//! with `--quiet`. A background thread samples shared counters, so the
//! export and the uploads never wait for the display.

use crate::upload::stream::Counters;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How progress is measured.
pub struct Source {
    /// Position (bytes) towards `total`: metadata read (collect) or image
    /// bytes read (upload).
    pub position: Arc<AtomicU64>,
    /// Total of `position`.
    pub total: u64,
    /// What the position counts, e.g. "of the metadata read".
    pub label: &'static str,
    /// Upload counters.
    pub counters: Arc<Counters>,
}

/// The running display.
pub struct Display {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Display {
    /// Starts the display (nothing when `quiet`).
    pub fn start(src: Source, quiet: bool) -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet {
            return Display { stop, handle: None };
        }
        let tty = std::io::stderr().is_terminal();
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            if tty {
                bar(&src, &s2)
            } else {
                lines(&src, &s2)
            }
        });
        Display {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and clears the display.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.end();
    }
}

fn waiting(c: &Counters) -> String {
    c.waiting.lock().map(|w| w.clone()).unwrap_or_default()
}

fn bar(src: &Source, stop: &AtomicBool) {
    let pb = ProgressBar::with_draw_target(Some(src.total.max(1)), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    let mut last_wait = String::new();
    while !stop.load(Ordering::Relaxed) {
        pb.set_position(src.position.load(Ordering::Relaxed).min(src.total));
        let c = &src.counters;
        let w = waiting(c);
        if !w.is_empty() && w != last_wait {
            // Retries stay visible above the bar.
            pb.println(format!("support-agent: {w}"));
        }
        pb.set_message(format!(
            "| uploaded {}",
            human(c.done.load(Ordering::Relaxed))
        ));
        last_wait = w;
        std::thread::sleep(Duration::from_millis(200));
    }
    pb.finish_and_clear();
}

fn lines(src: &Source, stop: &AtomicBool) {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut last_wait = String::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let c = &src.counters;
        let w = waiting(c);
        if !w.is_empty() && w != last_wait {
            eprintln!("support-agent: {w}");
        }
        last_wait = w;
        if last.elapsed() < Duration::from_secs(5) {
            continue;
        }
        last = Instant::now();
        let pos = src.position.load(Ordering::Relaxed).min(src.total);
        let sent = c.sent.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let pct = pos as f64 * 100.0 / src.total.max(1) as f64;
        let eta = if pos > 0 {
            format!("{:.0} s", secs * (src.total - pos) as f64 / pos as f64)
        } else {
            "unknown".into()
        };
        eprintln!(
            "support-agent: {pct:.0}% {} ({} of {}), uploaded {} ({}/s), ETA {eta}",
            src.label,
            human(pos),
            human(src.total),
            human(c.done.load(Ordering::Relaxed)),
            human((sent as f64 / secs) as u64),
        );
    }
}
