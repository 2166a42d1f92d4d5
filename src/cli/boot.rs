//! `kiln boot BUNDLE`: run a VM bundle in qemu on the serial console.

use std::path::PathBuf;
use std::time::Duration;

use kiln::boot::{boot, BootOptions, Outcome};
use kiln::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A bundle directory written by `kiln build` for a recipe with `[vm]`.
    bundle: PathBuf,
    /// Seconds to wait before giving up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Succeed, and stop the machine, once a console line contains this text.
    #[arg(long)]
    marker: Option<String>,
    /// Guest memory (qemu's `-m`).
    #[arg(long, default_value = "512M")]
    memory: String,
}

pub fn run(args: Args) -> Result<(), Error> {
    let opts = BootOptions {
        timeout: Duration::from_secs(args.timeout),
        marker: args.marker.clone(),
        memory: args.memory,
    };
    let outcome = boot(&args.bundle, &opts, &mut |line| println!("{line}"))?;
    // The machine ran and failed: its own exit code (6), not a verification failure.
    match outcome {
        Outcome::Marker => {
            eprintln!("boot: saw `{}`", args.marker.unwrap_or_default());
            Ok(())
        }
        Outcome::PoweredOff if args.marker.is_none() => Ok(()),
        Outcome::PoweredOff => Err(Error::boot(
            "the machine powered off before the marker appeared",
            "check the image's init",
        )),
        Outcome::Panic(line) => Err(Error::boot(
            format!("the kernel panicked: {line}"),
            "check `[vm].init` and the kernel command line",
        )),
        Outcome::TimedOut => Err(Error::boot(
            format!("nothing decisive within {} s", args.timeout),
            "raise `--timeout`, or check the console output above",
        )),
    }
}
