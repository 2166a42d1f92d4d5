//! `kiln sign REF --key KEY`, `kiln verify REF --key PUB` and `kiln referrers REF`.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::{parse_reference, Registry};
use kiln::sign::{cosign, keys, Scheme};

use super::registry_args::RegistryArgs;

/// Reads `--signature-scheme`.
pub fn parse_scheme(s: &str) -> Result<Scheme, String> {
    s.parse::<Scheme>().map_err(|e| e.to_string())
}

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
    /// Where the signature goes: `tags` (cosign's `sha256-<hex>.sig`), `referrers`
    /// (an OCI 1.1 referrer holding a Sigstore bundle), or `both`.
    #[arg(long, value_name = "SCHEME", default_value = "both", value_parser = parse_scheme)]
    signature_scheme: Scheme,
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
    /// Refuse a cosign signature whose payload names another repository (by
    /// default a signature travels with an image promoted to another repository).
    #[arg(long)]
    exact_identity: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReferrersArgs {
    /// The image: `REGISTRY/REPOSITORY@sha256:…` or `:TAG`.
    reference: String,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn sign(args: SignArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let key = super::keys::load_signing_key(&args.key)?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = kiln::sign::digest_of(&registry, &image)?;
    for d in kiln::sign::sign_all(
        &registry,
        &store,
        &image,
        &digest,
        &key,
        args.recursive,
        args.signature_scheme,
    )? {
        super::say(&format!("signed  {}@{d}", cosign::identity(&image)));
    }
    println!("{digest}");
    Ok(())
}

/// Loads each public key of `--key`, named by its path.
pub fn public_keys(paths: &[PathBuf]) -> Result<Vec<cosign::NamedKey>, Error> {
    paths
        .iter()
        .map(|p| {
            Ok(cosign::NamedKey {
                path: p.clone(),
                key: keys::load_public(p)?,
            })
        })
        .collect()
}

pub fn verify(args: VerifyArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let keys = public_keys(&args.key)?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = kiln::sign::digest_of(&registry, &image)?;
    let (matched, via) = cosign::verify(
        &registry,
        &store,
        &image,
        &digest,
        &keys,
        args.exact_identity,
    )?;
    let via = match via {
        cosign::Via::Tag => "cosign tag",
        cosign::Via::Referrer => "referrer",
    };
    println!(
        "verified {}@{digest}: signed by `{}` ({via})",
        cosign::identity(&image),
        matched.display()
    );
    if args.attestations {
        let types = kiln::attest::verify(&registry, &store, &image, &digest, &keys)?;
        println!("verified attestations: {}", types.join(", "));
    }
    Ok(())
}

pub fn referrers(args: ReferrersArgs) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let registry = Registry::new(args.registry.options()?, &[&image])?;
    let digest = kiln::sign::digest_of(&registry, &image)?;
    let all = kiln::sign::referrers::list_all(&registry, &image, &digest)?;
    if args.json {
        let text = serde_json::to_string_pretty(&all)
            .map_err(|e| Error::internal("render the referrers as JSON", e))?;
        println!("{text}");
        return Ok(());
    }
    if all.is_empty() {
        super::say(&format!(
            "nothing attached to {}@{digest}",
            cosign::identity(&image)
        ));
    }
    for r in &all {
        let scheme = match r.scheme {
            kiln::sign::referrers::Found::ReferrersApi => "referrers-api",
            kiln::sign::referrers::Found::ReferrersTag => "referrers-tag",
            kiln::sign::referrers::Found::CosignTag => "cosign-tag",
        };
        let annotations: Vec<String> = r
            .annotations
            .iter()
            .filter(|(k, _)| k.as_str() != "org.opencontainers.image.created")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let name = r.tag.clone().unwrap_or_default();
        println!(
            "{}  {}  {scheme}  {}{}",
            r.artifact_type,
            r.digest,
            name,
            annotations.join(" ")
        );
    }
    Ok(())
}
