//! Inputs, verified into the store: files and trees from the host
//! ([`local`]), OCI image layouts and archives ([`layout`]), and Debian
//! archives and their packages ([`deb`]).

pub mod accounts;
pub mod deb;
pub mod layout;
pub mod local;
pub mod sysusers;
pub mod walk;
