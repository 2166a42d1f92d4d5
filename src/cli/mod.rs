//! Command-line arguments and error rendering.

mod boot;
mod build;
mod completions;
mod copy;
mod diff;
mod inspect;
mod keys;
mod lock;
mod login;
mod man;
mod progress;
mod pull;
mod push;
mod registry_args;
mod reproduce;
mod sbom;
mod sign;
mod store;

use clap::{Parser, Subcommand};
use kiln::error::Error;

/// kiln builds reproducible, content-addressed OCI images from TOML recipes.
#[derive(Debug, Parser)]
#[command(name = "kiln", version = version(), about, after_help = exit_codes_help())]
pub struct Cli {
    /// Print nothing on stderr but errors: no progress, no bars.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// `0.1.0 (commit 33e6212, format 3)`: the release, the git commit it was
/// built from (`-dirty` when the checkout had changes, `unknown` outside a
/// checkout) and the format version that decides its digests.
fn version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (commit {}, format {})",
            env!("CARGO_PKG_VERSION"),
            env!("KILN_COMMIT"),
            kiln::plan::FORMAT_VERSION
        )
    })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a recipe into an OCI image layout (or archive) and print its digest.
    Build(build::Args),
    /// Show the images in an OCI image layout or archive.
    Inspect(inspect::Args),
    /// Show what changes if image B replaces image A; exit 0 if identical, 1 if not, 2 on error.
    Diff(diff::Args),
    /// Rebuild a signed image from the working tree and its provenance; exit 0 only if the digests match.
    Reproduce(reproduce::Args),
    /// Boot a VM bundle in qemu on the serial console; exit 6 if the machine fails, 5 if qemu does.
    Boot(boot::Args),
    /// Pin every input a recipe names by tag (a base image) in `RECIPE.lock`.
    Lock(lock::Args),
    /// Push an OCI layout or archive already built to a registry.
    Push(push::Args),
    /// Pull an image by digest into an OCI layout, verifying every blob.
    Pull(pull::Args),
    /// Copy an image, with its signatures and attestations, to one or more registry references.
    Copy(copy::Args),
    /// Make a P-256 signing key pair (`NAME.key`, `NAME.pub`); encrypted when `KILN_PASSWORD` is set.
    Keygen(keys::Args),
    /// Print the SPDX 2.3 SBOM of an image in an OCI layout or archive.
    Sbom(sbom::Args),
    /// Sign an image in a registry, in cosign's format.
    Sign(sign::SignArgs),
    /// Verify an image's signature against public keys; exit 0 only if one is valid.
    Verify(sign::VerifyArgs),
    /// List the signatures, attestations and other artifacts attached to an image.
    Referrers(sign::ReferrersArgs),
    /// Check and store registry credentials where docker and podman look for them.
    Login(login::Args),
    /// Verify the store's blobs, or prune what no recent build used.
    Store(store::Args),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(completions::Args),
    /// Print kiln's man page, or write one page per command into a directory.
    Man(man::Args),
}

/// The exit code table shown after `kiln --help`.
fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in kiln::error::exit::TABLE {
        text.push_str(&format!("\n  {code}  {meaning}"));
    }
    text
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), Error> {
    progress::init(cli.quiet);
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Push(args) => push::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Copy(args) => copy::run(args),
        Command::Login(args) => login::run(args),
        Command::Keygen(args) => keys::run(args),
        Command::Sign(args) => sign::sign(args),
        Command::Sbom(args) => sbom::run(args),
        Command::Verify(args) => sign::verify(args),
        Command::Referrers(args) => sign::referrers(args),
        Command::Store(args) => store::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
    }
}

/// The exit code of a command that succeeded yet found a difference
/// (`kiln diff`, `kiln reproduce`: 1); 0 unless one sets it.
static OUTCOME: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// The exit code of every error of a command that has one (`kiln diff`: 2,
/// as diff(1) does); 0 for the usual table.
static ERROR_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The exit code when the command returned `Ok`.
pub fn success_code() -> i32 {
    OUTCOME.load(std::sync::atomic::Ordering::Relaxed)
}

/// The exit code for the error `e`.
pub fn error_code(e: &Error) -> i32 {
    match ERROR_CODE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => e.exit_code(),
        code => code,
    }
}

/// Sets what [`success_code`] and [`error_code`] answer.
fn set_codes(outcome: i32, error: i32) {
    OUTCOME.store(outcome, std::sync::atomic::Ordering::Relaxed);
    ERROR_CODE.store(error, std::sync::atomic::Ordering::Relaxed);
}

/// Prints `error: …`, its causes and its hint on stderr.
pub fn render_error(e: &Error) {
    let mut text = format!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    if let Some(hint) = e.hint() {
        text.push_str(&format!("\nhint: {hint}"));
    }
    eprintln!("{text}");
}

/// Opens the store; its repair notes (a damaged blob removed) go to stderr.
fn open_store() -> Result<kiln::store::Store, Error> {
    Ok(
        kiln::store::Store::open(kiln::store::Store::default_root()?)?
            .with_notes(|text| eprintln!("{text}")),
    )
}

/// A progress line on stderr (above any bars), unless progress is off.
fn say(line: &str) {
    progress::screen().line(line);
}

/// Writes generated text (completions, a man page) to stdout; a reader that
/// stops early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::internal("write to standard output", e))
        }
        _ => Ok(()),
    }
}

/// Writes the digest file (if asked) and prints the digest as the last line of stdout.
fn finish_digest(
    digest: &kiln::digest::Digest,
    file: Option<&std::path::Path>,
) -> Result<(), Error> {
    if let Some(file) = file {
        kiln::pipeline::write_digest_file(file, digest)?;
    }
    println!("{digest}");
    Ok(())
}
