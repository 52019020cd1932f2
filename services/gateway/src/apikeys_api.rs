//! The gRPC face of API keys (`switchyard.gateway.v1.ApiKeyService`).

use secrecy::ExposeSecret;
use switchyard_auth::{ScopeTable, principal};
use switchyard_kit::convert::{checked_micros, timestamp};
use switchyard_proto::gateway::v1 as pb;
use switchyard_proto::gateway::v1::api_key_service_server::{ApiKeyService, ApiKeyServiceServer};
use tonic::{Request, Response, Status};

use crate::api::api_error;
use crate::domain::apikeys::{ApiKey, ApiKeyState, NewApiKey};
use crate::domain::{Gateway, GatewayError};

/// Creating and revoking keys.
pub const WRITE: &str = "apikeys.write";
/// Reading keys' metadata.
pub const READ: &str = "apikeys.read";

/// The scope of every method of `ApiKeyService`.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "switchyard.gateway.v1.ApiKeyService",
    methods: &[
        ("CreateApiKey", WRITE),
        ("GetApiKey", READ),
        ("ListApiKeys", READ),
        ("RevokeApiKey", WRITE),
    ],
    checked_by_handler: &[],
};

fn status(err: GatewayError) -> Status {
    api_error(err).into_status()
}

fn key_id(name: &str) -> Result<&str, Status> {
    name.strip_prefix("apiKeys/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| status(GatewayError::invalid("name", "must be apiKeys/{id}")))
}

fn key_to_proto(key: &ApiKey) -> pb::ApiKey {
    let now = switchyard_store::now_micros();
    pb::ApiKey {
        name: format!("apiKeys/{}", key.id),
        display_name: key.display_name.clone(),
        scopes: key.scopes.clone(),
        expire_time: key.expire_time.map(timestamp),
        prefix: key.prefix(),
        creator: key.creator.clone(),
        state: match key.state(now) {
            ApiKeyState::Active => pb::ApiKeyState::Active,
            ApiKeyState::Revoked => pb::ApiKeyState::Revoked,
            ApiKeyState::Expired => pb::ApiKeyState::Expired,
        }
        .into(),
        create_time: Some(timestamp(key.create_time)),
        revoke_time: key.revoke_time.map(timestamp),
    }
}

/// `switchyard.gateway.v1.ApiKeyService` over the domain.
#[derive(Debug, Clone)]
pub struct ApiKeyApi {
    domain: Gateway,
}

impl ApiKeyApi {
    /// The API over `domain`.
    pub fn new(domain: Gateway) -> Self {
        ApiKeyApi { domain }
    }

    /// As a tonic server accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> ApiKeyServiceServer<Self> {
        ApiKeyServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = principal(&request)?.clone();
        let key = request.into_inner().api_key.unwrap_or_default();
        let expire_time = key
            .expire_time
            .as_ref()
            .map(|ts| checked_micros("api_key.expire_time", ts))
            .transpose()
            .map_err(|v| status(GatewayError::Invalid(vec![v])))?;
        let (created, text) = self
            .domain
            .create_api_key(
                &caller,
                NewApiKey {
                    display_name: key.display_name,
                    scopes: key.scopes,
                    expire_time,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(key_to_proto(&created)),
            key: text.expose_secret().to_owned(),
        }))
    }

    async fn get_api_key(
        &self,
        request: Request<pb::GetApiKeyRequest>,
    ) -> Result<Response<pb::GetApiKeyResponse>, Status> {
        let tenant = principal(&request)?.tenant.clone();
        let key = self
            .domain
            .api_key(&tenant, key_id(&request.get_ref().name)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetApiKeyResponse {
            api_key: Some(key_to_proto(&key)),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let tenant = principal(&request)?.tenant.clone();
        let request = request.into_inner();
        let (keys, next_page_token) = self
            .domain
            .list_api_keys(&tenant, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(key_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let tenant = principal(&request)?.tenant.clone();
        let key = self
            .domain
            .revoke_api_key(&tenant, key_id(&request.get_ref().name)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(key_to_proto(&key)),
        }))
    }
}
