pub mod layout;
pub mod local;
