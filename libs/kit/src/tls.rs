//! TLS set-up shared by every outbound client.

/// Installs ring as the process's rustls crypto provider. Switchyard builds rustls without a
/// default provider, so that no C crypto library (aws-lc-sys) enters the build; every process
/// calls this before it builds an HTTP client. Calling it again is a no-op.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
