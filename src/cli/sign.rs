//! `kiln sign REF --key KEY` and `kiln verify REF --key PUB`.

use std::path::PathBuf;

use kiln::digest::Digest;
use kiln::error::Error;
use kiln::registry::{parse_reference, Registry};
use kiln::sign::{cosign, keys};
use kiln::store::Store;
use oci_client::Reference;
use serde_json::Value;

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
        Some(d) => d
            .parse()
            .map_err(|e: kiln::digest::BadDigest| Error::invalid(e.to_string(), None)),
        None => registry.resolve(r),
    }
}

/// Signs `digest` (and with `recursive`, the manifests of an index) in `image`'s repository.
pub fn sign_all(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    key: &p256::ecdsa::SigningKey,
    recursive: bool,
) -> Result<Vec<Digest>, Error> {
    let mut signed = vec![digest.clone()];
    if recursive {
        let pinned = image.clone_with_digest(digest.to_string());
        let top = registry.pull(store, &pinned, None)?;
        let doc: Value = serde_json::from_slice(&store.read(&top.digest)?).unwrap_or(Value::Null);
        for m in doc["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = m["digest"].as_str().and_then(|d| d.parse().ok()) {
                signed.push(d);
            }
        }
    }
    for d in &signed {
        cosign::sign(registry, store, image, d, key)?;
    }
    Ok(signed)
}

pub fn sign(args: SignArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let key = super::keys::load_signing_key(&args.key)?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = digest_of(&registry, &image)?;
    for d in sign_all(&registry, &store, &image, &digest, &key, args.recursive)? {
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
