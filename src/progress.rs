//! Byte progress of long work (rank 0, so every stage can report it): a
//! package download, a blob pulled from or pushed to a registry, a layer
//! being compressed. A stage that moves bytes asks a [`Progress`] for a
//! [`Meter`], moves it forward as bytes go, and finishes it; the events go
//! to whatever [`Sink`] the caller put in (the binary draws bars or prints
//! lines; the library never prints). A `Progress` with no sink costs one
//! branch per call, so stages report unconditionally.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What is moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Debian package downloaded from its archive.
    Package,
    /// A blob pulled from a registry.
    Pull,
    /// A blob pushed to a registry.
    Push,
    /// A layer being tarred and compressed (bytes of file content read).
    Layer,
}

/// One step of one transfer.
#[derive(Debug, Clone, Copy)]
pub enum Transfer<'a> {
    /// A transfer began.
    Started {
        /// Unique within the process; later events name it.
        id: u64,
        /// What moves.
        kind: Kind,
        /// What to call it: a package name, a short digest, a layer name.
        name: &'a str,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// Bytes done so far (absolute: a restarted download goes back).
    Moved {
        /// The transfer.
        id: u64,
        /// Bytes done.
        done: u64,
    },
    /// The transfer ended.
    Ended {
        /// The transfer.
        id: u64,
        /// Whether it completed (false: failed or given up, e.g. to try
        /// another mirror).
        complete: bool,
    },
}

/// Where transfer events go.
pub trait Sink: Send + Sync {
    /// A transfer moved.
    fn transfer(&self, event: Transfer<'_>);
}

/// How a blob is named in progress: `sha256:` and 12 hex digits.
pub fn blob_name(digest: &impl fmt::Display) -> String {
    let mut text = digest.to_string();
    text.truncate(19);
    text
}

/// A handle on an optional [`Sink`], cheap to clone into options and tasks.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Sink>>);

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Progress {
    /// Progress reported to `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Progress {
        Progress(Some(sink))
    }

    /// Whether anything listens.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Starts a meter for `name` (`total` bytes, when known).
    pub fn start(&self, kind: Kind, name: &str, total: Option<u64>) -> Meter {
        let Some(sink) = &self.0 else {
            return Meter(None);
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        sink.transfer(Transfer::Started {
            id,
            kind,
            name,
            total,
        });
        Meter(Some((sink.clone(), id, AtomicBool::new(false))))
    }
}

/// One transfer in progress (shareable: `&self` everywhere, so a stream
/// body can hold it in an `Arc`); dropped unfinished, it reports itself
/// incomplete.
pub struct Meter(Option<(Arc<dyn Sink>, u64, AtomicBool)>);

impl Default for Meter {
    /// A meter that reports nothing.
    fn default() -> Meter {
        Meter(None)
    }
}

impl Meter {
    /// `done` bytes are done so far.
    pub fn set(&self, done: u64) {
        if let Some((sink, id, _)) = &self.0 {
            sink.transfer(Transfer::Moved { id: *id, done });
        }
    }

    /// The transfer completed (said once, however often it is called).
    pub fn finish(&self) {
        self.end(true);
    }

    fn end(&self, complete: bool) {
        if let Some((sink, id, ended)) = &self.0 {
            if !ended.swap(true, Ordering::Relaxed) {
                sink.transfer(Transfer::Ended { id: *id, complete });
            }
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some((_, id, _)) => write!(f, "Meter({id})"),
            None => f.write_str("Meter(off)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Log(Mutex<Vec<String>>);

    impl Sink for Log {
        fn transfer(&self, event: Transfer<'_>) {
            let line = match event {
                Transfer::Started {
                    kind, name, total, ..
                } => format!("start {kind:?} {name} {total:?}"),
                Transfer::Moved { done, .. } => format!("moved {done}"),
                Transfer::Ended { complete, .. } => format!("ended {complete}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn a_meter_reports_its_steps_and_an_abandoned_one_ends_incomplete() {
        let log = Arc::new(Log(Mutex::new(Vec::new())));
        let progress = Progress::new(log.clone());
        let m = progress.start(Kind::Package, "libc6", Some(10));
        m.set(4);
        m.set(10);
        m.finish();
        m.finish();
        drop(m);
        drop(progress.start(Kind::Pull, "sha256:ab", None));
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "start Package libc6 Some(10)",
                "moved 4",
                "moved 10",
                "ended true",
                "start Pull sha256:ab None",
                "ended false"
            ]
        );
        // Off: nothing to report to, nothing reported.
        let off = Progress::default();
        assert!(!off.is_on());
        off.start(Kind::Layer, "x", None).finish();
    }
}
