//! The gRPC face of the credentials domain: proto conversions, the scope table, and the one
//! place where domain errors become statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use prost_types::Timestamp;
use switchyard_auth::{Principal, ScopeTable, principal};
use switchyard_kit::error::code_from_name;
use switchyard_kit::{ApiError, FieldViolation};
use switchyard_proto::credentials::v1 as pb;
use switchyard_proto::credentials::v1::credential_service_server::{
    CredentialService, CredentialServiceServer,
};
use switchyard_secrets::SecretBytes;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::error::CredentialError;
use crate::domain::model::*;
use crate::domain::service::{CreateInput, Credentials, UpdateField};
use crate::scopes;

/// The scope of every method of `CredentialService`.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "switchyard.credentials.v1.CredentialService",
    methods: &[
        ("CreateCredential", scopes::WRITE),
        ("GetCredential", scopes::READ),
        ("ListCredentials", scopes::READ),
        ("UpdateCredential", scopes::WRITE),
        ("DeleteCredential", scopes::WRITE),
        ("UndeleteCredential", scopes::WRITE),
        ("AccessCredential", scopes::ACCESS),
        ("RotateCredential", scopes::WRITE),
        ("ListCredentialVersions", scopes::READ),
        ("DisableCredentialVersion", scopes::WRITE),
        ("EnableCredentialVersion", scopes::WRITE),
        ("ListExpiringCredentials", scopes::READ),
        ("ListAuditEvents", scopes::AUDIT),
        ("VerifyAuditChain", scopes::AUDIT),
        ("ExportBackup", scopes::BACKUP),
        ("RestoreBackup", scopes::BACKUP),
    ],
    // Refusals of AccessCredential are audited, so its handler checks the scope. ExportBackup
    // also reads material: its handler requires the access scope on top of the backup scope.
    checked_by_handler: &["AccessCredential"],
};

/// The ErrorInfo domain of this service's errors.
pub const ERROR_DOMAIN: &str = "credentials.switchyard.dev";

/// Largest chunk of a backup bundle per ExportBackup message.
const EXPORT_CHUNK: usize = 1024 * 1024;

/// Turns a domain error into the status a caller sees. The code comes from
/// [`CredentialError::result_code`], which the audit log records too.
pub fn api_error(err: CredentialError) -> ApiError {
    let code = code_from_name(err.result_code());
    let api = match &err {
        CredentialError::Invalid(violations) => ApiError::invalid_argument(violations.clone()),
        CredentialError::NotFound(name) => ApiError::not_found(name),
        CredentialError::AlreadyExists(name) => {
            ApiError::new(code, "ALREADY_EXISTS", err.to_string()).with_metadata("resource", name)
        }
        CredentialError::EtagMismatch(name) => {
            ApiError::new(code, "ETAG_MISMATCH", err.to_string()).with_metadata("resource", name)
        }
        CredentialError::Expired { name, .. } => {
            ApiError::new(code, "CREDENTIAL_EXPIRED", err.to_string())
                .with_metadata("resource", name)
        }
        CredentialError::Unavailable { name, state } => {
            ApiError::new(code, "CREDENTIAL_UNAVAILABLE", err.to_string())
                .with_metadata("resource", name)
                .with_metadata("state", *state)
        }
        CredentialError::MissingScope(scope) => {
            ApiError::new(code, "MISSING_SCOPE", err.to_string())
                .with_metadata("required_scope", *scope)
        }
        CredentialError::AccessDenied(name) => {
            ApiError::new(code, "ACCESS_POLICY_DENIED", err.to_string())
                .with_metadata("resource", name)
        }
        CredentialError::Precondition(_) => {
            ApiError::new(code, "FAILED_PRECONDITION", err.to_string())
        }
        CredentialError::BackupInvalid(_) => ApiError::new(code, "BACKUP_INVALID", err.to_string()),
        CredentialError::Secrets(inner) if code == tonic::Code::Unavailable => {
            tracing::warn!(error = %inner, "secret store unavailable");
            ApiError::new(
                code,
                "SECRET_STORE_UNAVAILABLE",
                "the secret store is unavailable; retry later",
            )
            .with_retry_after(Duration::from_secs(1))
        }
        CredentialError::Secrets(_) | CredentialError::Store(_) => ApiError::internal(&err),
    };
    api.with_domain(ERROR_DOMAIN)
}

fn status(err: CredentialError) -> Status {
    api_error(err).into_status()
}

fn caller_of<T>(request: &Request<T>) -> Result<(Caller, Principal), Status> {
    let principal = principal(request)?.clone();
    let caller = Caller {
        tenant: principal.tenant.clone(),
        subject: principal.subject.clone(),
        request_id: switchyard_kit::telemetry::current_request_id().unwrap_or_default(),
    };
    Ok((caller, principal))
}

// --- conversions --------------------------------------------------------------------------------

pub use switchyard_kit::convert::timestamp;

fn micros_of(field: &str, ts: &Timestamp, violations: &mut Vec<FieldViolation>) -> Micros {
    switchyard_kit::convert::checked_micros(field, ts).unwrap_or_else(|violation| {
        violations.push(violation);
        0
    })
}

fn kind_of(value: i32) -> Result<Option<Kind>, FieldViolation> {
    use pb::CredentialKind as K;
    Ok(match K::try_from(value) {
        Ok(K::Unspecified) => None,
        Ok(K::ApiKey) => Some(Kind::ApiKey),
        Ok(K::OauthTokenSet) => Some(Kind::OauthTokenSet),
        Ok(K::UsernamePassword) => Some(Kind::UsernamePassword),
        Ok(K::ServiceAccountJson) => Some(Kind::ServiceAccountJson),
        Ok(K::WebhookSigningSecret) => Some(Kind::WebhookSigningSecret),
        Ok(K::Generic) => Some(Kind::Generic),
        Err(_) => return Err(FieldViolation::new("credential.kind", "unknown kind")),
    })
}

fn kind_to_proto(kind: Kind) -> pb::CredentialKind {
    use pb::CredentialKind as K;
    match kind {
        Kind::ApiKey => K::ApiKey,
        Kind::OauthTokenSet => K::OauthTokenSet,
        Kind::UsernamePassword => K::UsernamePassword,
        Kind::ServiceAccountJson => K::ServiceAccountJson,
        Kind::WebhookSigningSecret => K::WebhookSigningSecret,
        Kind::Generic => K::Generic,
    }
}

fn spec_of(credential: &pb::Credential, violations: &mut Vec<FieldViolation>) -> CredentialSpec {
    let rotation = credential.rotation_policy.unwrap_or_default();
    let period = rotation.rotation_period.unwrap_or_default();
    if period.seconds < 0 || period.nanos < 0 {
        violations.push(FieldViolation::new(
            "credential.rotation_policy.rotation_period",
            "must not be negative",
        ));
    }
    CredentialSpec {
        display_name: credential.display_name.clone(),
        provider: credential.provider.clone(),
        labels: credential
            .labels
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        expire_time: credential
            .expire_time
            .as_ref()
            .map(|ts| micros_of("credential.expire_time", ts, violations)),
        rotation: RotationPolicy {
            rotation_period_secs: period.seconds,
            retained_versions: i64::from(rotation.retained_versions),
        },
        allowed_subjects: credential
            .access_policy
            .clone()
            .unwrap_or_default()
            .allowed_subjects,
    }
}

/// A domain credential as the API shows it.
pub fn credential_to_proto(credential: &Credential) -> pb::Credential {
    let spec = &credential.spec;
    pb::Credential {
        name: credential.name(),
        display_name: spec.display_name.clone(),
        kind: kind_to_proto(credential.kind) as i32,
        provider: spec.provider.clone(),
        labels: spec.labels.clone().into_iter().collect(),
        expire_time: spec.expire_time.map(timestamp),
        rotation_policy: Some(pb::RotationPolicy {
            rotation_period: (spec.rotation.rotation_period_secs > 0).then_some(
                prost_types::Duration {
                    seconds: spec.rotation.rotation_period_secs,
                    nanos: 0,
                },
            ),
            retained_versions: i32::try_from(spec.rotation.retained_versions).unwrap_or(i32::MAX),
        }),
        access_policy: Some(pb::AccessPolicy {
            allowed_subjects: spec.allowed_subjects.clone(),
        }),
        state: match credential.state {
            State::Active => pb::CredentialState::Active,
            State::Deleted => pb::CredentialState::Deleted,
        } as i32,
        current_version: credential.current_version,
        create_time: Some(timestamp(credential.create_time)),
        update_time: Some(timestamp(credential.update_time)),
        delete_time: credential.delete_time.map(timestamp),
        purge_time: credential.purge_time.map(timestamp),
        next_rotation_time: credential.next_rotation_time.map(timestamp),
        etag: credential.etag(),
    }
}

fn version_to_proto(version: &Version) -> pb::CredentialVersion {
    pb::CredentialVersion {
        name: version.name(),
        version: version.version,
        state: match version.state {
            VersionState::Enabled => pb::VersionState::Enabled,
            VersionState::Disabled => pb::VersionState::Disabled,
            VersionState::Destroyed => pb::VersionState::Destroyed,
        } as i32,
        origin: match version.origin {
            Origin::Supplied => pb::VersionOrigin::Supplied,
            Origin::Generated => pb::VersionOrigin::Generated,
            Origin::Restored => pb::VersionOrigin::Restored,
        } as i32,
        create_time: Some(timestamp(version.create_time)),
        destroy_time: version.destroy_time.map(timestamp),
    }
}

fn audit_to_proto(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        sequence: event.sequence,
        time: Some(timestamp(event.time)),
        principal: event.principal,
        action: event.action,
        resource: event.resource,
        result_code: event.result_code,
        detail: event.detail,
        request_id: event.request_id,
        hash: event.hash,
        previous_hash: event.previous_hash,
    }
}

fn update_fields(
    mask: Option<&prost_types::FieldMask>,
) -> Result<BTreeSet<UpdateField>, CredentialError> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(CredentialError::invalid(
            "update_mask",
            "required: name the fields to update, or \"*\" for all of them",
        ));
    }
    let all = [
        UpdateField::DisplayName,
        UpdateField::Provider,
        UpdateField::Labels,
        UpdateField::ExpireTime,
        UpdateField::RotationPolicy,
        UpdateField::AccessPolicy,
    ];
    let mut fields = BTreeSet::new();
    let mut violations = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        match path.as_str() {
            "*" => fields.extend(all),
            "display_name" => _ = fields.insert(UpdateField::DisplayName),
            "provider" => _ = fields.insert(UpdateField::Provider),
            "labels" => _ = fields.insert(UpdateField::Labels),
            "expire_time" => _ = fields.insert(UpdateField::ExpireTime),
            "rotation_policy" => _ = fields.insert(UpdateField::RotationPolicy),
            "access_policy" => _ = fields.insert(UpdateField::AccessPolicy),
            other => violations.push(FieldViolation::new(
                format!("update_mask.paths[{index}]"),
                format!(
                    "{:?} cannot be updated; updatable: display_name, provider, labels, expire_time, rotation_policy, access_policy",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        }
    }
    if violations.is_empty() {
        Ok(fields)
    } else {
        Err(CredentialError::Invalid(violations))
    }
}

fn finish(violations: Vec<FieldViolation>) -> Result<(), Status> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(status(CredentialError::Invalid(violations)))
    }
}

// --- the service ---------------------------------------------------------------------------------

/// `switchyard.credentials.v1.CredentialService` over the domain.
#[derive(Debug, Clone)]
pub struct CredentialApi {
    domain: Credentials,
}

impl CredentialApi {
    /// The API of `domain`.
    pub fn new(domain: Credentials) -> Self {
        CredentialApi { domain }
    }

    /// The tonic server, with its message size limits.
    pub fn into_server(self, max_message_bytes: usize) -> CredentialServiceServer<Self> {
        CredentialServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportBackupResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CredentialService for CredentialApi {
    async fn create_credential(
        &self,
        request: Request<pb::CreateCredentialRequest>,
    ) -> Result<Response<pb::CreateCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let credential = request.credential.unwrap_or_default();
        let spec = spec_of(&credential, &mut violations);
        let kind = kind_of(credential.kind).unwrap_or_else(|v| {
            violations.push(v);
            None
        });
        finish(violations)?;
        let input = CreateInput {
            id: request.credential_id,
            kind,
            spec,
            payload: SecretBytes::new(request.payload.unwrap_or_default().data),
            request_id: Some(request.request_id).filter(|id| !id.is_empty()),
        };
        let created = self.domain.create(&caller, input).await.map_err(status)?;
        Ok(Response::new(pb::CreateCredentialResponse {
            credential: Some(credential_to_proto(&created)),
        }))
    }

    async fn get_credential(
        &self,
        request: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::GetCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let id = crate::domain::validate::parse_credential_name("name", &request.get_ref().name)
            .map_err(status)?;
        let credential = self.domain.get(&caller, &id).await.map_err(status)?;
        Ok(Response::new(pb::GetCredentialResponse {
            credential: Some(credential_to_proto(&credential)),
        }))
    }

    async fn list_credentials(
        &self,
        request: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let state = match pb::CredentialState::try_from(request.state) {
            Ok(pb::CredentialState::Unspecified) => None,
            Ok(pb::CredentialState::Active) => Some(State::Active),
            Ok(pb::CredentialState::Deleted) => Some(State::Deleted),
            Err(_) => return Err(status(CredentialError::invalid("state", "unknown state"))),
        };
        let filter = ListFilter {
            provider: Some(request.provider).filter(|p| !p.is_empty()),
            labels: request.labels.into_iter().collect(),
            state,
            show_deleted: request.show_deleted,
        };
        let page = self
            .domain
            .list(&caller, &filter, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: page.items.iter().map(credential_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_credential(
        &self,
        request: Request<pb::UpdateCredentialRequest>,
    ) -> Result<Response<pb::UpdateCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let credential = request.credential.unwrap_or_default();
        let id =
            crate::domain::validate::parse_credential_name("credential.name", &credential.name)
                .map_err(status)?;
        let mask = update_fields(request.update_mask.as_ref()).map_err(status)?;
        let mut violations = Vec::new();
        let spec = spec_of(&credential, &mut violations);
        finish(violations)?;
        let updated = self
            .domain
            .update(&caller, &id, spec, &mask, &credential.etag)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateCredentialResponse {
            credential: Some(credential_to_proto(&updated)),
        }))
    }

    async fn delete_credential(
        &self,
        request: Request<pb::DeleteCredentialRequest>,
    ) -> Result<Response<pb::DeleteCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let id = crate::domain::validate::parse_credential_name("name", &request.name)
            .map_err(status)?;
        let deleted = self
            .domain
            .delete(&caller, &id, &request.etag)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteCredentialResponse {
            credential: Some(credential_to_proto(&deleted)),
        }))
    }

    async fn undelete_credential(
        &self,
        request: Request<pb::UndeleteCredentialRequest>,
    ) -> Result<Response<pb::UndeleteCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let id = crate::domain::validate::parse_credential_name("name", &request.get_ref().name)
            .map_err(status)?;
        let restored = self.domain.undelete(&caller, &id).await.map_err(status)?;
        Ok(Response::new(pb::UndeleteCredentialResponse {
            credential: Some(credential_to_proto(&restored)),
        }))
    }

    async fn access_credential(
        &self,
        request: Request<pb::AccessCredentialRequest>,
    ) -> Result<Response<pb::AccessCredentialResponse>, Status> {
        let (caller, principal) = caller_of(&request)?;
        let has_scope = principal.has_scope(scopes::ACCESS);
        let accessed = self
            .domain
            .access(&caller, &request.get_ref().name, has_scope)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AccessCredentialResponse {
            name: accessed.name,
            kind: kind_to_proto(accessed.kind) as i32,
            payload: Some(pb::SecretPayload {
                data: accessed.material.expose().to_vec(),
            }),
            expire_time: accessed.expire_time.map(timestamp),
        }))
    }

    async fn rotate_credential(
        &self,
        request: Request<pb::RotateCredentialRequest>,
    ) -> Result<Response<pb::RotateCredentialResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let id = crate::domain::validate::parse_credential_name("name", &request.name)
            .map_err(status)?;
        let payload = request.payload.map(|p| SecretBytes::new(p.data));
        let request_id = Some(request.request_id.as_str()).filter(|id| !id.is_empty());
        let (credential, version) = self
            .domain
            .rotate(&caller, &id, payload, request_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateCredentialResponse {
            credential: Some(credential_to_proto(&credential)),
            version: Some(version_to_proto(&version)),
        }))
    }

    async fn list_credential_versions(
        &self,
        request: Request<pb::ListCredentialVersionsRequest>,
    ) -> Result<Response<pb::ListCredentialVersionsResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let id = crate::domain::validate::parse_credential_name("parent", &request.parent)
            .map_err(status)?;
        let page = self
            .domain
            .list_versions(&caller, &id, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListCredentialVersionsResponse {
            versions: page.items.iter().map(version_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn disable_credential_version(
        &self,
        request: Request<pb::DisableCredentialVersionRequest>,
    ) -> Result<Response<pb::DisableCredentialVersionResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let (id, number) =
            crate::domain::validate::parse_version_name("name", &request.get_ref().name)
                .map_err(status)?;
        let version = self
            .domain
            .set_version_enabled(&caller, &id, number, false)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DisableCredentialVersionResponse {
            version: Some(version_to_proto(&version)),
        }))
    }

    async fn enable_credential_version(
        &self,
        request: Request<pb::EnableCredentialVersionRequest>,
    ) -> Result<Response<pb::EnableCredentialVersionResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let (id, number) =
            crate::domain::validate::parse_version_name("name", &request.get_ref().name)
                .map_err(status)?;
        let version = self
            .domain
            .set_version_enabled(&caller, &id, number, true)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnableCredentialVersionResponse {
            version: Some(version_to_proto(&version)),
        }))
    }

    async fn list_expiring_credentials(
        &self,
        request: Request<pb::ListExpiringCredentialsRequest>,
    ) -> Result<Response<pb::ListExpiringCredentialsResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let within = match request.within {
            None => Duration::from_secs(30 * 24 * 3600),
            Some(d) if d.seconds >= 0 && d.nanos >= 0 => {
                Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs())
            }
            Some(_) => {
                return Err(status(CredentialError::invalid(
                    "within",
                    "must not be negative",
                )));
            }
        };
        let page = self
            .domain
            .list_expiring(&caller, within, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListExpiringCredentialsResponse {
            credentials: page.items.iter().map(credential_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        let filter = AuditFilter {
            resource: non_empty(request.resource),
            action: non_empty(request.action),
            principal: non_empty(request.principal),
            result_code: non_empty(request.result_code),
            start_time: request
                .start_time
                .as_ref()
                .map(|t| micros_of("start_time", t, &mut violations)),
            end_time: request
                .end_time
                .as_ref()
                .map(|t| micros_of("end_time", t, &mut violations)),
            newest_first: request.newest_first,
        };
        finish(violations)?;
        let page = self
            .domain
            .list_audit(&caller, &filter, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.items.into_iter().map(audit_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let report = self.domain.verify_chain(&caller).await.map_err(status)?;
        let response = match report.problem {
            None => pb::VerifyAuditChainResponse {
                intact: true,
                events_checked: report.events_checked,
                first_invalid_sequence: 0,
                problem: pb::ChainProblem::Unspecified as i32,
                description: format!("{} events, chain intact", report.events_checked),
                head_hash: report.head_hash,
            },
            Some(problem) => pb::VerifyAuditChainResponse {
                intact: false,
                events_checked: report.events_checked,
                first_invalid_sequence: problem.sequence,
                problem: match problem.kind {
                    ChainProblem::Modified => pb::ChainProblem::Modified,
                    ChainProblem::Missing => pb::ChainProblem::Missing,
                    ChainProblem::Reordered => pb::ChainProblem::Reordered,
                } as i32,
                description: problem.to_string(),
                head_hash: report.head_hash,
            },
        };
        Ok(Response::new(response))
    }

    type ExportBackupStream = ExportStream;

    async fn export_backup(
        &self,
        request: Request<pb::ExportBackupRequest>,
    ) -> Result<Response<Self::ExportBackupStream>, Status> {
        let (caller, principal) = caller_of(&request)?;
        let bundle = self
            .domain
            .export(
                &caller,
                &request.get_ref().passphrase,
                principal.has_scope(scopes::ACCESS),
            )
            .await
            .map_err(status)?;
        let messages = bundle
            .map_err(status)
            .map_ok(|bytes| {
                let chunks: Vec<Result<pb::ExportBackupResponse, Status>> = bytes
                    .chunks(EXPORT_CHUNK)
                    .map(|chunk| {
                        Ok(pb::ExportBackupResponse {
                            chunk: chunk.to_vec(),
                        })
                    })
                    .collect();
                futures::stream::iter(chunks)
            })
            .try_flatten();
        Ok(Response::new(Box::pin(messages)))
    }

    async fn restore_backup(
        &self,
        request: Request<Streaming<pb::RestoreBackupRequest>>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        let (caller, _) = caller_of(&request)?;
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| status(CredentialError::invalid("chunk", "the stream is empty")))?;
        let passphrase = first.passphrase.clone();
        let chunks = futures::stream::once(async move { Ok::<_, Status>(first.chunk) })
            .chain(messages.map_ok(|message| message.chunk));
        let report = self
            .domain
            .restore(&caller, &passphrase, Box::pin(chunks))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RestoreBackupResponse {
            credentials_created: report.credentials_created,
            credentials_existing: report.credentials_existing,
            versions_restored: report.versions_restored,
            versions_skipped: report.versions_skipped,
            restored: report.restored,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_out_of_range() {
        for micros in [0, 1, -1, 1_700_000_000_123_456] {
            let mut violations = Vec::new();
            assert_eq!(micros_of("t", &timestamp(micros), &mut violations), micros);
            assert!(violations.is_empty());
        }
        let mut violations = Vec::new();
        micros_of(
            "t",
            &Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
            &mut violations,
        );
        micros_of(
            "t",
            &Timestamp {
                seconds: 0,
                nanos: -1,
            },
            &mut violations,
        );
        assert_eq!(violations.len(), 2);
    }

    #[test]
    fn update_masks_are_checked() {
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert_eq!(update_fields(Some(&mask(&["labels"]))).unwrap().len(), 1);
        assert_eq!(update_fields(Some(&mask(&["*"]))).unwrap().len(), 6);
        assert!(update_fields(None).is_err());
        assert!(update_fields(Some(&mask(&["kind"]))).is_err());
        assert!(update_fields(Some(&mask(&["labels", "name"]))).is_err());
    }

    #[test]
    fn every_domain_error_maps_to_the_code_it_audits() {
        let errors = [
            CredentialError::invalid("f", "d"),
            CredentialError::NotFound("credentials/x".into()),
            CredentialError::AlreadyExists("credentials/x".into()),
            CredentialError::EtagMismatch("credentials/x".into()),
            CredentialError::Expired {
                name: "credentials/x".into(),
                expired_at: 0,
            },
            CredentialError::Unavailable {
                name: "credentials/x".into(),
                state: "disabled",
            },
            CredentialError::MissingScope(scopes::ACCESS),
            CredentialError::AccessDenied("credentials/x".into()),
            CredentialError::Precondition("p".into()),
            CredentialError::BackupInvalid("b".into()),
            CredentialError::Secrets(switchyard_secrets::SecretError::Unavailable("down".into())),
        ];
        for err in errors {
            let expected = err.result_code();
            let status = api_error(err).into_status();
            assert_eq!(switchyard_kit::error::code_name(status.code()), expected);
        }
    }
}
