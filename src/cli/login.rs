//! `kiln login REGISTRY -u USER --password-stdin`: check and store credentials
//! where docker and podman look for them.

use kiln::error::Error;
use kiln::registry::{auth, Credentials, Options, Registry};

use super::registry_args::read_password;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry, `host[:port]`.
    registry: String,
    /// The user name.
    #[arg(long, short = 'u')]
    username: String,
    /// Read the password from standard input (the only way: never on the command line).
    #[arg(long, required = true)]
    password_stdin: bool,
    /// Reach the registry over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry")]
    insecure: bool,
    /// Trust this CA certificate (PEM).
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Vec<std::path::PathBuf>,
}

pub fn run(args: Args) -> Result<(), Error> {
    let creds = Credentials {
        username: args.username.clone(),
        password: read_password()?,
    };
    let probe = kiln::registry::parse_reference(&format!("{}/kiln-login:probe", args.registry))?;
    let options = Options {
        insecure: if args.insecure {
            vec![args.registry.clone()]
        } else {
            Vec::new()
        },
        ca_certs: args.ca_cert,
        credentials: Some(creds.clone()),
        ..Default::default()
    };
    Registry::new(options, &[&probe])?.login_check(&probe)?;
    let file = auth::store(&args.registry, &creds)?;
    println!(
        "logged in to {} (credentials in `{}`)",
        args.registry,
        file.display()
    );
    Ok(())
}
