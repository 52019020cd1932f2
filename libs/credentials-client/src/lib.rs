//! Reads secret material from the credentials service with `AccessCredential`, which audits the
//! read and applies the credential's access policy. The reader presents a token of the tenant that
//! owns the credential, so a service acting for one tenant can never read another's: the
//! credentials service's own tenant isolation decides.

use std::collections::HashMap;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use switchyard_proto::credentials::v1::AccessCredentialRequest;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use tokio::sync::Mutex;

/// How a service proves itself to the credentials service.
#[derive(Debug, Clone)]
pub enum ServiceToken {
    /// A token given in configuration. It names one tenant: credentials of any other tenant are
    /// not found.
    Static(SecretString),
    /// Tokens minted with the installation's HS256 key, one per tenant, renewed before they
    /// expire. `request.tenant` is replaced by the tenant read for.
    Minted {
        /// The HS256 key.
        secret: SecretString,
        /// What the tokens say.
        request: switchyard_auth::TokenRequest,
    },
}

/// Why material could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The credentials service refused or failed; the message is its status message.
    #[error("reading {credential} from the credentials service: {message}")]
    Service {
        /// The credential's name.
        credential: String,
        /// gRPC status code.
        code: tonic::Code,
        /// What the service said.
        message: String,
    },
    /// No token could be made.
    #[error("the service token: {0}")]
    Token(String),
}

/// Reads credentials as a service principal.
#[derive(Debug)]
pub struct CredentialReader {
    client: CredentialServiceClient<tonic::transport::Channel>,
    token: ServiceToken,
    minted: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl CredentialReader {
    /// A reader talking to the credentials service on `channel`.
    pub fn new(channel: tonic::transport::Channel, token: ServiceToken) -> Self {
        CredentialReader {
            client: CredentialServiceClient::new(channel),
            token,
            minted: Mutex::new(HashMap::new()),
        }
    }

    async fn bearer(&self, tenant: &str) -> Result<SecretString, ReadError> {
        match &self.token {
            ServiceToken::Static(token) => Ok(token.clone()),
            ServiceToken::Minted { secret, request } => {
                let mut minted = self.minted.lock().await;
                // Renewed at half its lifetime, so a token in use never expires mid-call.
                if let Some((token, at)) = minted.get(tenant)
                    && at.elapsed() < request.ttl / 2
                {
                    return Ok(token.clone());
                }
                let request = switchyard_auth::TokenRequest {
                    tenant: tenant.to_owned(),
                    ..request.clone()
                };
                let token = switchyard_auth::mint(secret.expose_secret().as_bytes(), &request)
                    .map_err(|err| ReadError::Token(format!("minting: {err}")))?;
                let token = SecretString::from(token);
                minted.insert(tenant.to_owned(), (token.clone(), Instant::now()));
                Ok(token)
            }
        }
    }

    /// The current material of `credential` (`credentials/{id}`) of `tenant`.
    pub async fn read(&self, tenant: &str, credential: &str) -> Result<Vec<u8>, ReadError> {
        let bearer = self.bearer(tenant).await?;
        let mut request = tonic::Request::new(AccessCredentialRequest {
            name: credential.to_owned(),
        });
        let value = format!("Bearer {}", bearer.expose_secret())
            .parse()
            .map_err(|_| ReadError::Token("not a header value".into()))?;
        request.metadata_mut().insert("authorization", value);
        let response = self
            .client
            .clone()
            .access_credential(request)
            .await
            .map_err(|status| ReadError::Service {
                credential: credential.to_owned(),
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        Ok(response
            .into_inner()
            .payload
            .map(|payload| payload.data)
            .unwrap_or_default())
    }
}
