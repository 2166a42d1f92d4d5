//! Registry options shared by `build --push`, `push`, `pull`, `copy` and `login`.

use std::io::Read;
use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::{Credentials, Options};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Reach this registry (`host[:port]`) over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Trust this CA certificate (PEM) for registry TLS.
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// User name for the registry (with `--password-stdin`); overrides the auth files.
    #[arg(long, short = 'u')]
    username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// How many blobs to move at once.
    #[arg(long = "registry-jobs", default_value_t = 4)]
    registry_jobs: usize,
}

impl RegistryArgs {
    /// Resolves the options, reading the password from stdin when asked.
    pub fn options(&self) -> Result<Options, Error> {
        let credentials = match (&self.username, self.password_stdin) {
            (Some(u), true) => Some(Credentials {
                username: u.clone(),
                password: read_password()?,
            }),
            (None, false) => None,
            (Some(_), false) => {
                return Err(Error::invalid(
                    "`--username` needs `--password-stdin`",
                    Some("pipe the password in: `echo \"$PASSWORD\" | kiln … --username USER --password-stdin`".into()),
                ))
            }
            (None, true) => {
                return Err(Error::invalid(
                    "`--password-stdin` needs `--username`",
                    Some("add `--username USER`, or give neither and use stored credentials (`kiln login`)".into()),
                ))
            }
        };
        Ok(Options {
            insecure: self.insecure.clone(),
            ca_certs: self.ca_cert.clone(),
            credentials,
            jobs: self.registry_jobs,
            retries: 0,
            progress: super::progress::screen().progress(),
        })
    }
}

/// Reads a password from stdin, without its trailing newline.
pub fn read_password() -> Result<String, Error> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::internal("read the password from standard input", e))?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Error::invalid(
            "no password on standard input",
            Some("pipe it in: `echo \"$PASSWORD\" | kiln … --password-stdin`".into()),
        ));
    }
    Ok(password)
}
