//! What the user sees on stderr while kiln works: one [`Screen`] per run.
//!
//! On a terminal, long transfers (package downloads, blob pulls and pushes,
//! layer builds) are drawn as bars with bytes, rate and ETA, and every other
//! line is printed above them; anywhere else (a pipe, a CI log) each line
//! is printed plainly and a transfer gives one line when it ends; with
//! `--quiet` or `KILN_NO_PROGRESS=1` nothing is printed. Results never come
//! here: they go to stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::progress::{Kind, Progress, Sink, Transfer};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (`--quiet`, `KILN_NO_PROGRESS`).
    Off,
    /// Plain lines (stderr is not a terminal).
    Lines,
    /// Bars (stderr is a terminal).
    Bars,
}

/// The process's screen, set up once by [`init`].
static SCREEN: OnceLock<Arc<Screen>> = OnceLock::new();

/// Sets up the screen for this run (`quiet`: `--quiet`).
pub fn init(quiet: bool) {
    let off =
        quiet || std::env::var_os("KILN_NO_PROGRESS").is_some_and(|v| !v.is_empty() && v != "0");
    let mode = if off {
        Mode::Off
    } else if std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
    {
        Mode::Bars
    } else {
        Mode::Lines
    };
    let _ = SCREEN.set(Arc::new(Screen::new(mode)));
}

/// The screen (plain lines if [`init`] was not called).
pub fn screen() -> Arc<Screen> {
    SCREEN
        .get_or_init(|| Arc::new(Screen::new(Mode::Lines)))
        .clone()
}

/// Lines and bars on stderr.
pub struct Screen {
    mode: Mode,
    multi: MultiProgress,
    transfers: Mutex<HashMap<u64, Shown>>,
}

/// A transfer being shown.
struct Shown {
    kind: Kind,
    name: String,
    done: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Screen {
    fn new(mode: Mode) -> Screen {
        let target = match mode {
            Mode::Bars => ProgressDrawTarget::stderr_with_hz(10),
            _ => ProgressDrawTarget::hidden(),
        };
        Screen {
            mode,
            multi: MultiProgress::with_draw_target(target),
            transfers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether anything is shown at all.
    pub fn on(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Prints one line (above the bars, on a terminal).
    pub fn line(&self, text: &str) {
        match self.mode {
            Mode::Off => {}
            Mode::Lines => eprintln!("{text}"),
            Mode::Bars => {
                if self.multi.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
        }
    }

    /// Where the library reports transfers: here, unless nothing is shown.
    pub fn progress(self: &Arc<Self>) -> Progress {
        if self.on() {
            Progress::new(self.clone())
        } else {
            Progress::default()
        }
    }

    fn bar(&self, kind: Kind, name: &str, total: Option<u64>) -> ProgressBar {
        let verb = match kind {
            Kind::Package => "fetch",
            Kind::Pull => "pull",
            Kind::Push => "push",
            Kind::Layer => "layer",
        };
        let (bar, template) = match total {
            Some(t) => (
                ProgressBar::new(t),
                "{prefix:<5} {msg:18!} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ),
            None => (
                ProgressBar::no_length(),
                "{prefix:<5} {msg:18!} {spinner} {bytes} {binary_bytes_per_sec}",
            ),
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates are valid")
            .progress_chars("=> ");
        let bar = bar
            .with_style(style)
            .with_prefix(verb)
            .with_message(name.to_string());
        let bar = self.multi.add(bar);
        bar.tick();
        bar
    }
}

impl Sink for Screen {
    fn transfer(&self, event: Transfer<'_>) {
        if self.mode == Mode::Off {
            return;
        }
        let mut transfers = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Transfer::Started {
                id,
                kind,
                name,
                total,
            } => {
                let bar = (self.mode == Mode::Bars).then(|| self.bar(kind, name, total));
                transfers.insert(
                    id,
                    Shown {
                        kind,
                        name: name.to_string(),
                        done: 0,
                        started: Instant::now(),
                        bar,
                    },
                );
            }
            Transfer::Moved { id, done } => {
                if let Some(t) = transfers.get_mut(&id) {
                    t.done = done;
                    if let Some(bar) = &t.bar {
                        bar.set_position(done);
                    }
                }
            }
            Transfer::Ended { id, complete } => {
                let Some(t) = transfers.remove(&id) else {
                    return;
                };
                drop(transfers);
                if let Some(bar) = &t.bar {
                    bar.finish_and_clear();
                    self.multi.remove(bar);
                }
                // Layers have their own `built` line; a failed transfer its error.
                let what = match t.kind {
                    Kind::Package => "fetched package",
                    Kind::Pull => "pulled  blob",
                    Kind::Push => "sent    blob",
                    Kind::Layer => return,
                };
                if complete {
                    let size = super::build::human(t.done);
                    let line = match rate(t.done, t.started.elapsed()) {
                        Some(rate) => format!("{what} {} ({size}, {rate})", t.name),
                        None => format!("{what} {} ({size})", t.name),
                    };
                    self.line(&line);
                }
            }
        }
    }
}

/// `12.3 MiB/s`, when the transfer took long enough to say.
fn rate(bytes: u64, took: Duration) -> Option<String> {
    let secs = took.as_secs_f64();
    (secs >= 0.05 && bytes > 0)
        .then(|| format!("{}/s", super::build::human((bytes as f64 / secs) as u64)))
}
