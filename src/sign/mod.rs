//! Stage 8, trust: keys, cosign-compatible signatures, attestations.

pub mod cosign;
pub mod keys;
