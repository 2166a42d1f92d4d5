//! `kiln store verify|prune`: keep the store healthy and bounded.

use kiln::error::Error;
use kiln::store::maintain::{parse_age, parse_size, PruneOptions};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Re-hash every blob and check every layer record; remove damaged ones (exit 4 if any).
    Verify {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs no recent build used (safe while builds run).
    Prune {
        /// Remove blobs not used for this long: `30d`, `12h`, `90m`, `45s`, `2w`.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Then remove least recently used blobs until the store's blobs total at most this: `10G`, `500M`.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<(), Error> {
    let store = super::open_store()?;
    match args.command {
        Command::Verify { json } => {
            let report = store.verify(&|_, _| {})?;
            if json {
                println!("{}", json!(report));
            } else {
                for d in &report.damaged {
                    println!("removed  {} {}: {}", d.kind, d.name, d.reason);
                }
                println!(
                    "checked  {} blobs ({}) and {} layer records: {} damaged",
                    report.blobs,
                    super::build::human(report.bytes),
                    report.layer_records,
                    report.damaged.len()
                );
            }
            if report.damaged.is_empty() {
                Ok(())
            } else {
                Err(Error::verification(
                    format!(
                        "the store at `{}` held {} damaged item(s); they were removed",
                        kiln::store::Store::default_root()?.display(),
                        report.damaged.len()
                    ),
                    "builds make removed blobs again; check the disk if this recurs",
                ))
            }
        }
        Command::Prune {
            older_than,
            max_size,
            json,
        } => {
            if older_than.is_none() && max_size.is_none() {
                return Err(Error::invalid(
                    "`kiln store prune` needs `--older-than`, `--max-size` or both",
                    Some("e.g. `kiln store prune --older-than 30d --max-size 10G`".into()),
                ));
            }
            let report = store.prune(&PruneOptions {
                older_than,
                max_size,
            })?;
            if json {
                println!("{}", json!(report));
            } else {
                println!(
                    "removed  {} blobs ({}) and {} cache records; kept {} blobs ({})",
                    report.removed,
                    super::build::human(report.removed_bytes),
                    report.records_removed,
                    report.kept,
                    super::build::human(report.kept_bytes)
                );
            }
            if report.in_use > 0 {
                eprintln!(
                    "note: kept {} blobs over `--max-size` that a running kiln process may use",
                    report.in_use
                );
            }
            Ok(())
        }
    }
}
