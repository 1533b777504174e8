//! Test images and OCI client requests live in the test kit ([`shoal_testkit::image`]); what
//! only the peer's tests need (Basic auth) is here.

pub use shoal_testkit::image::*;

/// `Authorization: Basic …` for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}
