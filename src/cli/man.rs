//! `kiln man`: the man page, generated from the clap definition (so every
//! flag documented there is documented here). Without `--out` it prints
//! `kiln(1)` on stdout (`kiln man | man -l -`); with `--out DIR` it writes
//! `kiln.1` and one `kiln-COMMAND.1` per subcommand into `DIR` (for
//! `kiln man --out /usr/local/share/man/man1`).

use std::path::PathBuf;

use clap::CommandFactory;
use kiln::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write `kiln.1` and one `kiln-COMMAND.1` per command into this directory instead of printing `kiln.1`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One page, rendered.
fn render(command: clap::Command) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .map_err(|e| Error::internal("render the man page", e))?;
    Ok(out)
}

pub fn run(args: Args) -> Result<(), Error> {
    let mut top = super::Cli::command();
    top.build();
    let Some(dir) = args.out else {
        return super::write_stdout(&render(top)?);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let mut pages = vec![("kiln.1".to_string(), top.clone())];
    for sub in top.get_subcommands().filter(|c| c.get_name() != "help") {
        // The page's title and `.SH NAME` read `kiln-build`, as git's do.
        // clap names are `&'static str`; this process ends soon after.
        let name: &'static str = format!("kiln-{}", sub.get_name()).leak();
        let page = sub.clone().name(name).display_name(name);
        pages.push((format!("{name}.1"), page));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        // Written with the umask's mode (0644 as a rule): `man` runs as
        // whoever reads the page.
        std::fs::write(&path, render(page)?).map_err(|e| Error::io("write", &path, e))?;
        super::say(&format!("wrote   {}", path.display()));
    }
    Ok(())
}
