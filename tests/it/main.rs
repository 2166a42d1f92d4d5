//! kiln's integration tests, one crate (one binary to link) instead of one
//! per file: each module below runs the real `kiln` binary, or a parser of
//! the library, the way a user or an attacker would. Helpers shared by the
//! modules (a scratch workspace, a local registry, a local Debian
//! repository, a real cosign) live in `support`.
//!
//! Run one module with a filter: `cargo test --test it registry::`.

#[macro_use]
mod support;

mod accounts;
mod apt_fixture;
mod apt_parity;
mod archives;
mod attestations;
mod bad_input;
mod debian;
mod declarative;
mod deflate_determinism;
mod diff;
mod errors;
mod exit_codes;
mod fuzz;
mod incremental;
mod java_truststore;
mod late_hashing;
mod load_containerd;
mod load_docker;
mod load_modes;
mod load_names;
mod load_podman;
mod lock_commands;
mod lock_satisfied;
mod oci_documents;
mod output;
mod promote;
mod push_layout;
mod readme;
mod real_tools;
mod referrers;
mod registry;
mod registry_faults;
mod remote_cache;
mod reproduce;
mod reproducibility;
mod sbom_syft;
mod signing;
mod single_platform;
mod store;
mod sysusers;
mod ux;
mod vm;
mod vm_hostile;
mod warm_debian;
