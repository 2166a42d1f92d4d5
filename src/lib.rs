pub mod digest;
pub mod error;
pub mod json;
pub mod recipe;
pub mod store;
