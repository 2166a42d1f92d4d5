pub mod deb;
pub mod layout;
pub mod local;
