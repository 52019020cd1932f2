//! The gRPC face of OAuth connections (`switchyard.oauth.v1.OAuthService`).

use secrecy::ExposeSecret;
use switchyard_auth::{ScopeTable, principal};
use switchyard_kit::FieldViolation;
use switchyard_kit::convert::timestamp;
use switchyard_oauth::Provider;
use switchyard_proto::oauth::v1 as pb;
use switchyard_proto::oauth::v1::o_auth_service_server::{OAuthService, OAuthServiceServer};
use tonic::{Request, Response, Status};

use crate::api::api_error;
use crate::domain::oauth::{Connection, ConnectionState, OAuthClient};
use crate::domain::{Gateway, GatewayError};

/// Registering the tenant's OAuth clients.
pub const ADMIN: &str = "oauth.admin";
/// Starting authorizations and managing connections.
pub const CONNECT: &str = "oauth.connect";
/// Reading connections.
pub const READ: &str = "oauth.read";
/// Using a connection's token.
pub const ACCESS: &str = "oauth.access";

/// The scope of every method of `OAuthService`.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "switchyard.oauth.v1.OAuthService",
    methods: &[
        ("CreateClient", ADMIN),
        ("GetClient", ADMIN),
        ("StartAuthorization", CONNECT),
        ("ListConnections", READ),
        ("GetConnection", READ),
        ("RefreshConnection", CONNECT),
        ("DeleteConnection", CONNECT),
        ("AccessConnection", ACCESS),
    ],
    checked_by_handler: &[],
};

fn status(err: GatewayError) -> Status {
    api_error(err).into_status()
}

fn invalid(field: &str, description: &str) -> Status {
    status(GatewayError::Invalid(vec![FieldViolation::new(
        field,
        description,
    )]))
}

fn provider_of(value: i32) -> Result<Provider, Status> {
    match pb::Provider::try_from(value) {
        Ok(pb::Provider::Github) => Ok(Provider::GitHub),
        Ok(pb::Provider::Gitlab) => Ok(Provider::GitLab),
        Ok(pb::Provider::Slack) => Ok(Provider::Slack),
        Ok(pb::Provider::Discord) => Ok(Provider::Discord),
        Ok(pb::Provider::Google) => Ok(Provider::Google),
        Ok(pb::Provider::Unspecified) | Err(_) => Err(invalid("provider", "required")),
    }
}

fn provider_to_proto(provider: Provider) -> pb::Provider {
    match provider {
        Provider::GitHub => pb::Provider::Github,
        Provider::GitLab => pb::Provider::Gitlab,
        Provider::Slack => pb::Provider::Slack,
        Provider::Discord => pb::Provider::Discord,
        Provider::Google => pb::Provider::Google,
    }
}

fn client_to_proto(client: &OAuthClient, redirect_uri: String) -> pb::Client {
    pb::Client {
        name: format!("clients/{}", client.provider.as_str()),
        provider: provider_to_proto(client.provider).into(),
        client_id: client.client_id.clone(),
        client_secret_credential: client.secret_credential.clone(),
        base_url: client.base_url.clone().unwrap_or_default(),
        redirect_uri,
    }
}

/// A connection as the API shows it.
pub fn connection_to_proto(connection: &Connection) -> pb::Connection {
    pb::Connection {
        name: format!("connections/{}", connection.id),
        provider: provider_to_proto(connection.provider).into(),
        account_id: connection.account_id.clone(),
        account_name: connection.account_name.clone(),
        requested_scopes: connection.requested_scopes.clone(),
        granted_scopes: connection.granted_scopes.clone(),
        state: match connection.state {
            ConnectionState::Active => pb::ConnectionState::Active,
            ConnectionState::NeedsReauth => pb::ConnectionState::NeedsReauth,
        }
        .into(),
        token_credential: connection.token_credential.clone(),
        expire_time: connection.expire_time.map(timestamp),
        create_time: Some(timestamp(connection.create_time)),
        update_time: Some(timestamp(connection.update_time)),
    }
}

/// `switchyard.oauth.v1.OAuthService` over the domain.
#[derive(Debug, Clone)]
pub struct OAuthApi {
    domain: Gateway,
}

impl OAuthApi {
    /// The API over `domain`.
    pub fn new(domain: Gateway) -> Self {
        OAuthApi { domain }
    }

    /// As a tonic server accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> OAuthServiceServer<Self> {
        OAuthServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

fn tenant_of<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(principal(request)?.tenant.clone())
}

#[tonic::async_trait]
impl OAuthService for OAuthApi {
    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let client = request
            .into_inner()
            .client
            .ok_or_else(|| invalid("client", "required"))?;
        let (stored, redirect) = self
            .domain
            .create_oauth_client(OAuthClient {
                tenant,
                provider: provider_of(client.provider)?,
                client_id: client.client_id,
                secret_credential: client.client_secret_credential,
                base_url: Some(client.base_url).filter(|b| !b.is_empty()),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateClientResponse {
            client: Some(client_to_proto(&stored, redirect)),
        }))
    }

    async fn get_client(
        &self,
        request: Request<pb::GetClientRequest>,
    ) -> Result<Response<pb::GetClientResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let (client, redirect) = self
            .domain
            .get_oauth_client(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetClientResponse {
            client: Some(client_to_proto(&client, redirect)),
        }))
    }

    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let (url, expires) = self
            .domain
            .start_authorization(&tenant, provider_of(request.provider)?, request.scopes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartAuthorizationResponse {
            authorize_url: url.to_string(),
            expire_time: Some(timestamp(expires)),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let page = self
            .domain
            .list_connections(&tenant, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: page.items.iter().map(connection_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::GetConnectionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let connection = self
            .domain
            .get_connection(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConnectionResponse {
            connection: Some(connection_to_proto(&connection)),
        }))
    }

    async fn refresh_connection(
        &self,
        request: Request<pb::RefreshConnectionRequest>,
    ) -> Result<Response<pb::RefreshConnectionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let (_, connection) = self
            .domain
            .access_connection(&tenant, &request.get_ref().name, &[], true)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RefreshConnectionResponse {
            connection: Some(connection_to_proto(&connection)),
        }))
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let revoked_upstream = self
            .domain
            .delete_connection(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteConnectionResponse {
            revoked_upstream,
        }))
    }

    async fn access_connection(
        &self,
        request: Request<pb::AccessConnectionRequest>,
    ) -> Result<Response<pb::AccessConnectionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let (token, connection) = self
            .domain
            .access_connection(&tenant, &request.name, &request.required_scopes, false)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AccessConnectionResponse {
            access_token: token.expose_secret().to_owned(),
            expire_time: connection.expire_time.map(timestamp),
            connection: Some(connection_to_proto(&connection)),
        }))
    }
}
