//! Material Switchyard makes itself, for the kinds that allow it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use switchyard_secrets::SecretBytes;
use zeroize::Zeroizing;

use super::model::Kind;

/// New material for `kind`, or `None` if Switchyard cannot make it (it comes from a provider).
pub fn generate(kind: Kind) -> Option<SecretBytes> {
    let mut random = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(random.as_mut());
    let text = match kind {
        // The Standard Webhooks secret format: "whsec_" and base64 of the key.
        Kind::WebhookSigningSecret => format!("whsec_{}", STANDARD.encode(random.as_ref())),
        Kind::Generic => URL_SAFE_NO_PAD.encode(random.as_ref()),
        Kind::ApiKey | Kind::OauthTokenSet | Kind::UsernamePassword | Kind::ServiceAccountJson => {
            return None;
        }
    };
    Some(SecretBytes::new(text.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_has_the_documented_shape() {
        let secret = generate(Kind::WebhookSigningSecret).unwrap();
        let text = std::str::from_utf8(secret.expose()).unwrap();
        let key = STANDARD
            .decode(text.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
        let generic = generate(Kind::Generic).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(generic.expose()).unwrap().len(), 32);
        assert_ne!(generate(Kind::Generic), generate(Kind::Generic));
        for kind in Kind::ALL {
            assert_eq!(generate(kind).is_some(), kind.is_generatable());
        }
    }
}
