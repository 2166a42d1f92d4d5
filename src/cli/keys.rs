//! `kiln keygen`, and the key loading that `sign` and `build --sign-key` share.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use kiln::error::{Error, IoContext};
use kiln::sign::keys;
use p256::ecdsa::SigningKey;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write `NAME.key` (private) and `NAME.pub` (public).
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
}

/// The password for an encrypted key: `KILN_PASSWORD`, `COSIGN_PASSWORD`, or a prompt on the terminal.
pub fn password() -> Result<String, Error> {
    for var in ["KILN_PASSWORD", "COSIGN_PASSWORD"] {
        if let Ok(p) = std::env::var(var) {
            return Ok(p);
        }
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            Error::invalid(
                "the key is encrypted and there is no terminal to ask for its password",
                Some("set `KILN_PASSWORD`".into()),
            )
        })?;
    let echo = |on: bool| {
        let _ = std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(tty.try_clone().expect("the terminal can be shared"))
            .status();
    };
    let mut out = tty.try_clone().at("open", Path::new("/dev/tty"))?;
    write!(out, "password for the key: ").at("write", Path::new("/dev/tty"))?;
    echo(false);
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    echo(true);
    writeln!(out).at("write", Path::new("/dev/tty"))?;
    read.at("read", Path::new("/dev/tty"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Loads a private key, asking for its password only if it is encrypted.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, Error> {
    keys::load_private(path, &password)
}

pub fn run(args: Args) -> Result<(), Error> {
    let private = args.out.with_extension("key");
    let public = args.out.with_extension("pub");
    for p in [&private, &public] {
        if p.exists() {
            return Err(Error::invalid(
                format!("refusing to overwrite `{}`", p.display()),
                Some("choose another `--out`, or move the old key away first".into()),
            ));
        }
    }
    let key = keys::generate();
    let password = std::env::var("KILN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    kiln::files::write_new(
        &private,
        keys::private_pem(&key, password.as_deref()).as_bytes(),
        0o600,
    )?;
    kiln::files::write_new(
        &public,
        keys::public_pem(key.verifying_key()).as_bytes(),
        0o644,
    )?;
    let how = if password.is_some() {
        "encrypted with KILN_PASSWORD"
    } else {
        "unencrypted"
    };
    println!(
        "wrote {} ({how}) and {}",
        private.display(),
        public.display()
    );
    Ok(())
}
