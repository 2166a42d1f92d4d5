//! `kiln sign REF --key KEY` and `kiln verify REF --key PUB`.

use std::path::PathBuf;

use kiln::digest::Digest;
use kiln::error::Error;
use kiln::registry::{parse_reference, Registry};
use kiln::sign::{cosign, keys};
use oci_client::Reference;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The image: `REGISTRY/REPOSITORY@sha256:…` (a tag is resolved to its digest first).
    reference: String,
    /// The private key (PKCS#8 PEM, or cosign's encrypted key with `KILN_PASSWORD`).
    #[arg(long)]
    key: PathBuf,
    /// For an image index, also sign every platform manifest.
    #[arg(long)]
    recursive: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The image: `REGISTRY/REPOSITORY@sha256:…` (a tag is resolved to its digest first).
    reference: String,
    /// A public key (PEM) to accept; repeat for several (one valid signature is enough).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// Also require attestations signed by the key, whose subject is this digest.
    #[arg(long)]
    attestations: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The digest a reference names, resolving a tag.
fn digest_of(registry: &Registry, r: &Reference) -> Result<Digest, Error> {
    match r.digest() {
        Some(d) => d.parse().map_err(|e: kiln::digest::BadDigest| {
            Error::invalid(e.to_string(), Some(kiln::error::hint::DIGEST.into()))
        }),
        None => registry.resolve(r),
    }
}

pub fn sign(args: SignArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let key = super::keys::load_signing_key(&args.key)?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = digest_of(&registry, &image)?;
    for d in kiln::sign::sign_all(&registry, &store, &image, &digest, &key, args.recursive)? {
        super::say(&format!("signed  {}@{d}", cosign::identity(&image)));
    }
    println!("{digest}");
    Ok(())
}

pub fn verify(args: VerifyArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let keys = args
        .key
        .iter()
        .map(|p| {
            Ok(cosign::NamedKey {
                path: p.clone(),
                key: keys::load_public(p)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = digest_of(&registry, &image)?;
    let matched = cosign::verify(&registry, &store, &image, &digest, &keys)?;
    println!(
        "verified {}@{digest}: signed by `{}`",
        cosign::identity(&image),
        matched.display()
    );
    if args.attestations {
        let types = kiln::attest::verify(&registry, &store, &image, &digest, &keys)?;
        println!("verified attestations: {}", types.join(", "));
    }
    Ok(())
}
