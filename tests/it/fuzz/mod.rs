//! Fuzz targets for every parser of outside input, on the stable toolchain:
//! seeded random and mutated inputs, a bounded number of cases each (small
//! in CI; `scripts/fuzz.sh` runs each for a chosen time with fresh seeds).
//! A panic, a case slower than the harness allows, or a broken property is
//! a failure.

mod binary;
mod gen;
mod oci;
mod package;
mod regressions;
mod seeds;
mod text;
mod version;
