//! `kiln inspect PATH`: show what an OCI layout or archive holds.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::inspect::{inspect, Report};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or OCI archive file.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    let report = inspect(&args.path)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialise")
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn render(r: &Report) -> String {
    let mut s = format!("{}\n", r.path.display());
    for rf in &r.refs {
        s += &format!(
            "  ref {} -> {} ({})\n",
            rf.name.as_deref().unwrap_or("(unnamed)"),
            rf.digest,
            rf.media_type
        );
    }
    for img in &r.images {
        s += &format!("\nimage {} ({})\n", img.digest, img.platform);
        s += &format!("  config   {}\n", img.config_digest);
        if let Some(c) = &img.created {
            s += &format!("  created  {c}\n");
        }
        if let Some(Value::Object(cfg)) = &img.config {
            for (k, v) in cfg {
                s += &format!("  {:<8} {}\n", k, compact(v));
            }
        }
        if !img.annotations.is_empty() {
            s += "  annotations\n";
            for (k, v) in &img.annotations {
                s += &format!("    {k} = {v}\n");
            }
        }
        s += &format!("  layers ({})\n", img.layers.len());
        for l in &img.layers {
            s += &format!("    {}  {:>10} bytes  {}\n", l.digest, l.size, l.media_type);
            if let Some(d) = &l.diff_id {
                s += &format!("      diff_id {d}\n");
            }
        }
    }
    s
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
