//! kiln builds reproducible, content-addressed OCI images from TOML recipes.
//!
//! The pipeline runs one way, one module per stage: [`recipe`] (parse) →
//! [`source`] (read inputs into a [`plan`]) → [`layer`] (tar + compress into
//! the [`store`]) → [`image`] (config, manifest, index) → [`export`] (OCI
//! layout or archive). [`pipeline`] runs the whole pipeline for one recipe;
//! [`inspect`] reads a layout back. `ARCHITECTURE.md` gives the stage order.

// Stages return values and errors; only the binary prints or exits.
#![forbid(unsafe_code)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod attest;
pub mod beneath;
pub mod boot;
pub mod diff;
pub mod digest;
pub mod error;
pub mod export;
pub mod files;
pub mod image;
pub mod image_name;
pub mod inspect;
pub mod json;
pub mod layer;
pub mod lock;
pub mod oci;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod resolve;
pub mod sign;
pub mod source;
pub mod store;
