//! Errors of the library, and the diagnostics that point into recipe files.
//!
//! Every error names what it is about (a path in backticks, a digest, a
//! recipe line) and, where we know the fix, carries a hint. A cause that is
//! an error value stays one (`#[source]`), so the binary can print it as a
//! `caused by:` line instead of finding it flattened into the message. The
//! binary maps [`Error::exit_code`] to the process exit status; the codes are
//! in [`exit`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;

/// A cause kept as an error value.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The process exit codes, one per kind of failure a CI script may act on
/// differently. They are documented in the README; existing codes never change
/// meaning.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Anything else: an I/O error on a path, an internal failure.
    pub const INTERNAL: i32 = 1;
    /// Bad input: a recipe, an argument, a lockfile, a base image or layout, a key.
    pub const BAD_INPUT: i32 = 2;
    /// A registry or mirror refused a request or could not be reached (often worth a retry).
    pub const NETWORK: i32 = 3;
    /// Verification failed: content that does not match its digest, a
    /// signature or attestation that does not verify.
    pub const VERIFICATION: i32 = 4;
    /// A host tool kiln runs (`qemu-system-x86_64`, `mkfs.erofs`, `gpgv` …) is
    /// missing or failed: fix the host, not the input.
    pub const HOST_TOOL: i32 = 5;
    /// `kiln boot`: the machine booted but did not succeed (a kernel panic, a
    /// power-off before the marker, a timeout).
    pub const BOOT_FAILED: i32 = 6;

    /// Every code and what it means, as `kiln --help` and the README list them.
    pub const TABLE: &[(i32, &str)] = &[
        (OK, "success"),
        (INTERNAL, "anything else: an I/O error on a path, an internal failure"),
        (BAD_INPUT, "bad input: a recipe, an argument, a lockfile, a base, a layout, a key"),
        (NETWORK, "a registry or mirror refused a request or could not be reached"),
        (
            VERIFICATION,
            "verification failed: content that does not match its digest, a signature or attestation that does not verify",
        ),
        (
            HOST_TOOL,
            "a host tool (qemu, mkfs.erofs, mksquashfs, mke2fs, gpgv …) is missing or failed",
        ),
        (
            BOOT_FAILED,
            "`kiln boot`: the kernel panicked, the machine powered off before the marker, or the timeout passed",
        ),
    ];
}

/// Hints that several errors share.
pub mod hint {
    /// For an image layout, archive or artifact whose documents are not what
    /// the OCI image spec says they must be.
    pub const DAMAGED_IMAGE: &str = "the image is damaged or was not written by an OCI tool: build it again with `kiln build`, or pull it again with `kiln pull`";
    /// For a registry that does not follow the OCI distribution spec.
    pub const NOT_OCI_REGISTRY: &str = "the registry does not follow the OCI distribution spec here: upgrade it, or push to another registry";
    /// For a digest that does not parse.
    pub const DIGEST: &str = "write a digest as `sha256:` followed by 64 lowercase hex digits";
}

/// Everything that can go wrong in kiln's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in a recipe or a lockfile, located at a file, line and
    /// column; its cause, when it is an error value, is its source.
    #[error(transparent)]
    Recipe(Box<Diagnostic>),

    /// Input that is not valid, outside any recipe (an argument, an image layout, the environment).
    #[error("{message}")]
    Invalid {
        /// What is wrong, naming the thing.
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },

    /// An I/O operation on `path` failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What kiln was doing (`read`, `create`, `rename` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A registry refused or failed a request, or could not be reached.
    #[error("{message}")]
    Registry {
        /// What failed, naming the registry, the blob or manifest, and the HTTP status.
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },

    /// A signature or attestation check failed (none found, wrong key, wrong digest or identity).
    #[error("{message}")]
    Verification {
        /// Why verification failed.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },

    /// Content did not match the digest it is named by.
    #[error("digest mismatch for {what}: expected `{expected}`, got `{actual}`")]
    DigestMismatch {
        /// The blob or file that was checked.
        what: String,
        /// The digest it should have.
        expected: Box<Digest>,
        /// The digest it has.
        actual: Box<Digest>,
    },

    /// Input kiln cannot use, with the error that says why as its cause: a
    /// document a parser refused (JSON, xz, PEM), a file it cannot read, an
    /// operation the host refused.
    #[error("{message}")]
    Unusable {
        /// What is wrong, naming the thing (`` `index.json` is not valid JSON ``).
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
        /// Why: the parser's or the operating system's error.
        #[source]
        source: BoxError,
    },

    /// A request to a registry or mirror failed, or it could not be reached.
    #[error("cannot {action} `{url}`{}", status.map_or(String::new(), |s| format!(": HTTP {s}")))]
    Network {
        /// What kiln was doing (`download`, `fetch the token from` …).
        action: String,
        /// The URL (without credentials).
        url: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// How to fix it, when known.
        hint: Option<String>,
        /// The transport's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A host tool kiln runs is missing or failed.
    #[error("{message}")]
    Tool {
        /// The program (`qemu-system-x86_64`, `mkfs.erofs` …).
        tool: String,
        /// What went wrong, naming the tool.
        message: String,
        /// How to fix it (usually: which package to install).
        hint: Option<String>,
        /// The error starting it, when it could not be started.
        #[source]
        source: Option<io::Error>,
    },

    /// `kiln boot`: the machine ran but did not succeed.
    #[error("{message}")]
    Boot {
        /// What the console showed (the panic line) or what did not happen.
        message: String,
        /// What to check.
        hint: Option<String>,
    },

    /// kiln could not do something that has no path to name: start its
    /// network runtime or HTTP client, read standard input, keep a stream.
    #[error("cannot {action}")]
    Internal {
        /// What kiln was doing.
        action: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

/// The user-info part of a reference or URL (`user:pass` in
/// `user:pass@host/repo` or `https://user:pass@host`), if it has one.
pub fn userinfo(text: &str) -> Option<&str> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &rest[..at])
}

/// `text` with its [`userinfo`] replaced by `***`, so that no error or log
/// prints a password; `None` when there is none.
pub fn redact_userinfo(text: &str) -> Option<String> {
    userinfo(text).map(|secret| text.replacen(secret, "***", 1))
}

/// A result with kiln's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error, one of [`exit`]: 2 bad input,
    /// 3 registry or network, 4 verification, 5 host tool, 6 boot failed,
    /// 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Recipe(_) | Error::Invalid { .. } | Error::Unusable { .. } => exit::BAD_INPUT,
            Error::DigestMismatch { .. } | Error::Verification { .. } => exit::VERIFICATION,
            Error::Registry { .. } | Error::Network { .. } => exit::NETWORK,
            Error::Tool { .. } => exit::HOST_TOOL,
            Error::Boot { .. } => exit::BOOT_FAILED,
            Error::Io { .. } | Error::Internal { .. } => exit::INTERNAL,
        }
    }

    /// The hint to show after the message, if any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Recipe(d) => d.hint.as_deref(),
            Error::Invalid { hint, .. }
            | Error::Registry { hint, .. }
            | Error::Verification { hint, .. }
            | Error::Unusable { hint, .. }
            | Error::Network { hint, .. }
            | Error::Tool { hint, .. }
            | Error::Boot { hint, .. } => hint.as_deref(),
            Error::Io { source, .. } if full(source) => Some(
                "free space on that filesystem (`kiln store prune` removes what no recent build used), or point `KILN_CACHE` or `--out` at another, then run the command again",
            ),
            Error::Io { .. } | Error::DigestMismatch { .. } | Error::Internal { .. } => None,
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Verification`] with a hint.
    pub fn verification(message: impl Into<String>, hint: &str) -> Self {
        Error::Verification {
            message: message.into(),
            hint: Some(hint.to_string()),
        }
    }

    /// Builds an [`Error::Invalid`] with an optional hint.
    pub fn invalid(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Invalid {
            message: message.into(),
            hint,
        }
    }

    /// Builds an [`Error::Unusable`]: `message` names what is wrong,
    /// `source` says why.
    pub fn unusable(
        message: impl Into<String>,
        source: impl Into<BoxError>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Unusable {
            message: message.into(),
            hint: Some(hint.into()),
            source: source.into(),
        }
    }

    /// Builds an [`Error::Network`] for a request to `url` that failed with `source`.
    pub fn network(
        action: impl Into<String>,
        url: impl Into<String>,
        source: impl Into<BoxError>,
        hint: Option<String>,
    ) -> Self {
        Error::Network {
            action: action.into(),
            url: url.into(),
            status: None,
            hint,
            source: Some(source.into()),
        }
    }

    /// Builds an [`Error::Tool`] for a program that could not be started;
    /// `package` is the Debian package that has it.
    pub fn tool_missing(tool: impl Into<String>, package: &str, source: io::Error) -> Self {
        let tool = tool.into();
        Error::Tool {
            message: format!("cannot run `{tool}`"),
            hint: Some(format!(
                "install Debian's `{package}` package, or put `{tool}` on PATH"
            )),
            tool,
            source: Some(source),
        }
    }

    /// Builds an [`Error::Tool`] for a program that ran and failed.
    pub fn tool_failed(tool: impl Into<String>, message: impl Into<String>, hint: &str) -> Self {
        Error::Tool {
            tool: tool.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
            source: None,
        }
    }

    /// Builds an [`Error::Boot`].
    pub fn boot(message: impl Into<String>, hint: &str) -> Self {
        Error::Boot {
            message: message.into(),
            hint: Some(hint.to_string()),
        }
    }

    /// Builds an [`Error::Internal`].
    pub fn internal(action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Internal {
            action: action.into(),
            source: source.into(),
        }
    }
}

/// Adds the path to an `io::Result`, turning it into kiln's [`Error::Io`].
pub trait IoContext<T> {
    /// Names the action and the path on error.
    fn at(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

/// A recipe file's text, kept so that errors can quote it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The recipe's path as the user named it.
    pub path: PathBuf,
    /// The recipe's text.
    pub text: String,
}

impl Source {
    /// A diagnostic for `span` (byte offsets into the text).
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let text = self.text[line_start..line_end].trim_end_matches('\r');
        // A very long line (a 4 MB path) is shown as a window around the caret.
        let skip = (column - 1).saturating_sub(EXCERPT_BEFORE);
        let chars = text.chars().count();
        let mut excerpt: String = text.chars().skip(skip).take(EXCERPT_CHARS).collect();
        if skip + EXCERPT_CHARS < chars {
            excerpt.push('…');
        }
        let caret = column - 1 - skip;
        let mut width = self.text[start..end].chars().count().max(1);
        width = width.min(EXCERPT_CHARS.saturating_sub(caret).max(1));
        if skip > 0 {
            excerpt.insert(0, '…');
        }
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
            caret: caret + usize::from(skip > 0),
            excerpt,
            width,
            hint: None,
            cause: None,
            source: None,
        }
    }
}

/// How many characters of a recipe line an error shows, and how many of
/// them come before the caret when the line is cut.
const EXCERPT_CHARS: usize = 160;
const EXCERPT_BEFORE: usize = 60;

/// An error at a place in a recipe: `file:line:column`, the line, a caret and a hint.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The recipe file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The text of the line (a window of it, marked with `…`, when it is long).
    pub excerpt: String,
    /// Where the caret stands in `excerpt`, in characters from its start.
    pub caret: usize,
    /// How many characters the caret underlines.
    pub width: usize,
    /// How to fix it.
    pub hint: Option<String>,
    /// The underlying cause, as text, shown on a `caused by:` line.
    pub cause: Option<String>,
    /// The underlying cause as an error value (an OS error, a nested
    /// recipe's error): the diagnostic's [`source`](std::error::Error::source),
    /// so every link of its chain is shown.
    pub source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Diagnostic {
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Replaces `secret` wherever the excerpt shows it.
    pub fn redact(mut self, secret: &str) -> Self {
        if !secret.is_empty() {
            self.excerpt = self.excerpt.replace(secret, "***");
        }
        self
    }

    /// Adds a cause, as text.
    pub fn cause(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Adds a cause that is an error, kept as the diagnostic's source.
    pub fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }
}

impl std::error::Error for Diagnostic {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Error::Recipe(Box::new(d))
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(
            f,
            "`{}:{}:{}`: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{num} | {}", self.excerpt)?;
        let lead: String = self
            .excerpt
            .chars()
            .take(self.caret)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(self.width))?;
        if let Some(cause) = &self.cause {
            write!(f, "\n  caused by: {cause}")?;
        }
        Ok(())
    }
}

/// An error and its causes, joined with `: `.
pub fn render_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether `e` says the filesystem (or the user's quota on it) is full.
fn full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_info_only() {
        assert_eq!(
            redact_userinfo("u:p@h:5000/r:t").as_deref(),
            Some("***@h:5000/r:t")
        );
        assert_eq!(
            redact_userinfo("https://u:p@h/r@sha256:00").as_deref(),
            Some("https://***@h/r@sha256:00")
        );
        assert_eq!(redact_userinfo("h:5000/r@sha256:00"), None);
        assert_eq!(redact_userinfo("u:p@h"), Some("***@h".into()));
    }

    /// A diagnostic's cause stays an error value: the chain reaches it, and
    /// the diagnostic's own text does not repeat it.
    #[test]
    fn a_diagnostic_keeps_its_cause_as_its_source() {
        let src = Source {
            path: "r.toml".into(),
            text: "src = \"nope\"\n".into(),
        };
        let os = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let e = Error::from(src.error(6..12, "cannot use `nope`").caused_by(os));
        assert!(!e.to_string().contains("no such file"), "{e}");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "no such file");
        assert!(render_chain(&e).ends_with("^^^^^^: no such file"));
    }

    #[test]
    fn exit_codes_keep_their_meaning() {
        let tool = Error::tool_missing(
            "qemu-system-x86_64",
            "qemu-system-x86",
            io::ErrorKind::NotFound.into(),
        );
        assert_eq!(tool.exit_code(), 5);
        assert_eq!(
            Error::boot("the kernel panicked", "check init").exit_code(),
            6
        );
        assert_eq!(Error::invalid("x", None).exit_code(), 2);
        assert_eq!(
            Error::network("download", "http://m/x", io::Error::other("reset"), None).exit_code(),
            3
        );
        assert_eq!(Error::verification("x", "y").exit_code(), 4);
        assert_eq!(
            Error::io("read", "/x", io::ErrorKind::NotFound.into()).exit_code(),
            1
        );
        let codes: Vec<i32> = exit::TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn locates_line_and_column() {
        let src = Source {
            path: "r.toml".into(),
            text: "name = \"x\"\n[config]\nuser = 5\n".into(),
        };
        let at = src.text.find('5').unwrap();
        let d = src.error(at..at + 1, "wrong type");
        assert_eq!((d.line, d.column), (3, 8));
        let shown = d.to_string();
        assert!(shown.starts_with("`r.toml:3:8`: wrong type"), "{shown}");
        assert!(shown.contains("3 | user = 5\n  |        ^"), "{shown}");
    }
}
