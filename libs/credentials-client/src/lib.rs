//! A service's client of the credentials service: reads material with `AccessCredential` (which
//! audits the read and applies the credential's access policy), and stores material a service
//! obtained for a tenant (OAuth token sets) with `CreateCredential` and `RotateCredential`. It
//! presents a token of the tenant that owns the credential, so a service acting for one tenant
//! can never touch another's: the credentials service's own tenant isolation decides.

use std::collections::HashMap;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use switchyard_proto::credentials::v1::{
    AccessCredentialRequest, CreateCredentialRequest, Credential, CredentialKind,
    DeleteCredentialRequest, RotateCredentialRequest, SecretPayload,
};
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

/// Reads and stores credentials as a service principal.
#[derive(Debug)]
pub struct CredentialsClient {
    client: CredentialServiceClient<tonic::transport::Channel>,
    token: ServiceToken,
    minted: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl CredentialsClient {
    /// A reader talking to the credentials service on `channel`.
    pub fn new(channel: tonic::transport::Channel, token: ServiceToken) -> Self {
        CredentialsClient {
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

    async fn request<T>(&self, tenant: &str, message: T) -> Result<tonic::Request<T>, ReadError> {
        let bearer = self.bearer(tenant).await?;
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", bearer.expose_secret())
            .parse()
            .map_err(|_| ReadError::Token("not a header value".into()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// The current material of `credential` (`credentials/{id}`) of `tenant`.
    pub async fn read(&self, tenant: &str, credential: &str) -> Result<Vec<u8>, ReadError> {
        let request = self
            .request(
                tenant,
                AccessCredentialRequest {
                    name: credential.to_owned(),
                },
            )
            .await?;
        let response = self
            .client
            .clone()
            .access_credential(request)
            .await
            .map_err(|status| service_error(credential, &status))?;
        Ok(response
            .into_inner()
            .payload
            .map(|payload| payload.data)
            .unwrap_or_default())
    }

    /// Stores `material` as `credentials/{id}` of `tenant`: creates it, or adds a version if it
    /// exists. Returns the credential's name.
    pub async fn store(
        &self,
        tenant: &str,
        id: &str,
        kind: CredentialKind,
        provider: &str,
        material: Vec<u8>,
    ) -> Result<String, ReadError> {
        let name = format!("credentials/{id}");
        let create = self
            .request(
                tenant,
                CreateCredentialRequest {
                    credential_id: id.to_owned(),
                    credential: Some(Credential {
                        kind: kind as i32,
                        provider: provider.to_owned(),
                        ..Default::default()
                    }),
                    payload: Some(SecretPayload {
                        data: material.clone(),
                    }),
                    request_id: String::new(),
                },
            )
            .await?;
        match self.client.clone().create_credential(create).await {
            Ok(_) => return Ok(name),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(service_error(&name, &status)),
        }
        let rotate = self
            .request(
                tenant,
                RotateCredentialRequest {
                    name: name.clone(),
                    payload: Some(SecretPayload { data: material }),
                    request_id: String::new(),
                },
            )
            .await?;
        self.client
            .clone()
            .rotate_credential(rotate)
            .await
            .map_err(|status| service_error(&name, &status))?;
        Ok(name)
    }

    /// Deletes `credential` of `tenant` (softly: the credentials service keeps it for its
    /// recovery window). One already gone is not an error.
    pub async fn delete(&self, tenant: &str, credential: &str) -> Result<(), ReadError> {
        let request = self
            .request(
                tenant,
                DeleteCredentialRequest {
                    name: credential.to_owned(),
                    ..Default::default()
                },
            )
            .await?;
        match self.client.clone().delete_credential(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(service_error(credential, &status)),
        }
    }
}

fn service_error(credential: &str, status: &tonic::Status) -> ReadError {
    ReadError::Service {
        credential: credential.to_owned(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}
