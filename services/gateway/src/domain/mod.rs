//! The webhook receiver and the event log: endpoints, verification, durable commit, listing;
//! [`delivery`] the outbound side. Free of transport types: the HTTP route and the gRPC API both
//! call [`Gateway`].

pub mod apikeys;
mod commit;
pub mod delivery;
pub mod oauth;
pub mod sso;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use switchyard_kit::FieldViolation;
use switchyard_store::page::{self, PageError};
use switchyard_store::{Db, StoreError};
use switchyard_webhooks::{Answer, Inbound, Policy, Source, Verifier, VerifyError};
use tokio::sync::Mutex;

use crate::store;

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// Where a platform sends its webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Generated, unguessable.
    pub id: String,
    /// The owner.
    pub tenant: String,
    /// Who sends.
    pub source: Source,
    /// `credentials/{id}` holding the key; `None` for SNS.
    pub credential: Option<String>,
    /// For people.
    pub display_name: String,
    /// Timestamp tolerance; `None`: the source's default.
    pub tolerance: Option<Duration>,
    /// SNS: the pinned topic.
    pub sns_topic_arn: Option<String>,
    /// When it was made.
    pub create_time: Micros,
}

impl Endpoint {
    /// The path the sender posts to.
    pub fn url_path(&self) -> String {
        format!("/hooks/{}/{}", self.source, self.id)
    }
}

/// What CreateInboundEndpoint is given.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Who sends; `None` if unspecified.
    pub source: Option<Source>,
    /// `credentials/{id}`, empty if none.
    pub credential: String,
    /// For people.
    pub display_name: String,
    /// Timestamp tolerance.
    pub tolerance: Option<Duration>,
    /// SNS: the topic, empty if none.
    pub sns_topic_arn: String,
    /// Makes a retried create return the first one's endpoint.
    pub request_id: Option<String>,
}

/// Who an event comes from: a webhook sender, or Switchyard itself (test events, and
/// operational events such as a subscription being disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSource {
    /// A verified webhook of this sender.
    Webhook(Source),
    /// Switchyard.
    Switchyard,
}

impl EventSource {
    /// Its name in records and in subscription filters.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Webhook(source) => source.as_str(),
            EventSource::Switchyard => "switchyard",
        }
    }

    /// The source named `name`.
    pub fn parse(name: &str) -> Option<EventSource> {
        match name {
            "switchyard" => Some(EventSource::Switchyard),
            name => Source::parse(name).map(EventSource::Webhook),
        }
    }
}

/// An accepted webhook, or an event of Switchyard's own, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Time-ordered id.
    pub id: String,
    /// The owner.
    pub tenant: String,
    /// The endpoint's id; empty for Switchyard's own events.
    pub endpoint: String,
    /// Who sent it.
    pub source: EventSource,
    /// Its type.
    pub event_type: String,
    /// What it is about.
    pub subject: Option<String>,
    /// When the sender signed it, or else when it arrived.
    pub time: Micros,
    /// When it was committed.
    pub receive_time: Micros,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// The body as JSON.
    pub data: serde_json::Value,
    /// Headers kept for consumers.
    pub headers: Vec<(String, String)>,
    /// The body's Content-Type.
    pub content_type: String,
    /// The body, byte for byte; only read by [`Gateway::get_event`].
    pub raw_body: Vec<u8>,
}

/// ListEvents' filters.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this endpoint's id.
    pub endpoint: Option<String>,
    /// Only this source.
    pub source: Option<EventSource>,
    /// This type, or its sub-types (`pull_request` matches `pull_request.opened`).
    pub event_type: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Received at or after.
    pub received_after: Option<Micros>,
    /// Received before.
    pub received_before: Option<Micros>,
    /// A CEL expression over the event that must hold (as a subscription's filter); empty: none.
    pub expression: String,
}

/// A page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Everything that can go wrong in the gateway's domain.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is invalid; each violation names a field.
    #[error("invalid request: {0:?}")]
    Invalid(Vec<FieldViolation>),
    /// No such resource for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The resource is not in a state that allows the call (a connection needing
    /// re-authorization, a scope not granted).
    #[error("{message}")]
    Precondition {
        /// The ErrorInfo reason, UPPER_SNAKE_CASE.
        reason: &'static str,
        /// For people.
        message: String,
    },
    /// The credential presented (an API key) is not accepted.
    #[error("{0}")]
    Unauthenticated(String),
    /// The server is stopping; the caller should retry elsewhere (streams: with their cursor).
    #[error("{0}")]
    Unavailable(String),
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GatewayError {
    pub(crate) fn invalid(field: &str, description: impl Into<String>) -> Self {
        GatewayError::Invalid(vec![FieldViolation::new(field, description)])
    }
}

pub(crate) fn page_error(field: &str) -> impl Fn(PageError) -> GatewayError + '_ {
    move |err| GatewayError::invalid(field, err.to_string())
}

/// Why a webhook was not accepted, and so what its sender is told.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// No such endpoint (or it was deleted, or is of another source): 404.
    #[error("no such webhook endpoint")]
    UnknownEndpoint,
    /// The request does not verify: 401, nothing stored.
    #[error(transparent)]
    Refused(VerifyError),
    /// The endpoint's key could not be read or used (the operator's to fix), or SNS's
    /// certificate could not be fetched: 503, so that the sender retries.
    #[error("the endpoint cannot verify requests at the moment")]
    VerificationUnavailable,
    /// The request verified but could not be committed: 503, the sender retries.
    #[error("the event could not be stored")]
    Store(#[from] StoreError),
    /// An SNS subscription could not be confirmed: 503, SNS sends the confirmation again.
    #[error("the SNS subscription could not be confirmed")]
    Confirmation,
}

/// A webhook accepted and committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// The stored event's id (the first delivery's, for a redelivery).
    pub event_id: String,
    /// Whether it had been received before.
    pub duplicate: bool,
    /// What to answer.
    pub answer: Answer,
}

/// Reads an endpoint's key material.
#[async_trait]
pub trait EndpointKeys: Send + Sync + std::fmt::Debug {
    /// The material of `credential` of `tenant`.
    async fn key(&self, tenant: &str, credential: &str) -> Result<SecretString, String>;
}

#[async_trait]
impl EndpointKeys for switchyard_credentials_client::CredentialsClient {
    async fn key(&self, tenant: &str, credential: &str) -> Result<SecretString, String> {
        let material = self
            .read(tenant, credential)
            .await
            .map_err(|err| err.to_string())?;
        String::from_utf8(material)
            .map(SecretString::from)
            .map_err(|_| format!("{credential} is not text"))
    }
}

/// Visits an SNS `SubscribeURL`.
#[async_trait]
pub trait SubscriptionConfirmer: Send + Sync + std::fmt::Debug {
    /// Confirms the subscription at `url`, which has been checked to be AWS's.
    async fn confirm(&self, url: &url::Url) -> Result<(), String>;
}

/// Confirms over HTTPS.
#[derive(Debug, Clone)]
pub struct HttpsConfirmer(pub reqwest::Client);

#[async_trait]
impl SubscriptionConfirmer for HttpsConfirmer {
    async fn confirm(&self, url: &url::Url) -> Result<(), String> {
        let response = self
            .0
            .get(url.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }
}

/// The outside world the gateway reaches.
#[derive(Debug, Clone)]
pub struct Outside {
    /// Endpoint keys.
    pub keys: Arc<dyn EndpointKeys>,
    /// SNS certificates.
    pub certificates: Arc<dyn switchyard_webhooks::CertificateFetcher>,
    /// SNS confirmations.
    pub confirmer: Arc<dyn SubscriptionConfirmer>,
    /// Outbound deliveries.
    pub delivery: Arc<dyn delivery::DeliveryClient>,
    /// OAuth connections; `None` where they are not configured.
    pub oauth: Option<oauth::OAuthOutside>,
    /// Single sign-on; `None` where it is not configured.
    pub sso: Option<sso::SsoOutside>,
}

/// The gateway's domain.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    verifier: Verifier,
    keys: Arc<dyn EndpointKeys>,
    confirmer: Arc<dyn SubscriptionConfirmer>,
    delivery: Arc<dyn delivery::DeliveryClient>,
    delivery_config: crate::config::DeliveryConfig,
    /// Wakes the delivery worker when a delivery is made.
    wake: Arc<tokio::sync::Notify>,
    committer: commit::Committer,
    /// Ends event streams.
    shutdown: tokio_util::sync::CancellationToken,
    oauth: Option<oauth::OAuthOutside>,
    refresh_locks: oauth::RefreshLocks,
    sso: Option<sso::SsoOutside>,
    sso_discovered: tokio::sync::OnceCell<sso::Discovered>,
    key_cache_ttl: Duration,
    key_cache: Mutex<HashMap<(String, String), (SecretString, Instant)>>,
    api_keys: apikeys::Resolved,
}

/// The most event data (as JSON text) in one ListEvents page: a quarter of the default largest
/// gRPC message.
const MAX_PAGE_DATA_BYTES: usize = 1024 * 1024;

/// Events read at once by a ListEvents with an expression.
const SCAN_BATCH: usize = 500;
/// The most events one ListEvents page looks at for an expression.
const MAX_SCANNED: usize = 10_000;

/// Bound on cached keys; past it the cache starts over.
const MAX_CACHED_KEYS: usize = 10_000;

pub(crate) fn micros(time: SystemTime) -> Micros {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

impl Gateway {
    /// The domain over `db` (migrated by the caller).
    pub fn new(
        db: Db,
        outside: Outside,
        config: &crate::GatewayConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let committer = commit::Committer::start(db.clone(), wake.clone());
        Gateway {
            inner: Arc::new(Inner {
                db,
                verifier: Verifier::new(outside.certificates),
                keys: outside.keys,
                confirmer: outside.confirmer,
                delivery: outside.delivery,
                delivery_config: config.delivery.clone(),
                committer,
                wake,
                shutdown,
                oauth: outside.oauth,
                refresh_locks: oauth::RefreshLocks::default(),
                sso: outside.sso,
                sso_discovered: tokio::sync::OnceCell::new(),
                key_cache_ttl: config.key_cache_ttl,
                key_cache: Mutex::new(HashMap::new()),
                api_keys: apikeys::Resolved::default(),
            }),
        }
    }

    /// Registers an endpoint.
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        new: NewEndpoint,
    ) -> Result<Endpoint, GatewayError> {
        let mut violations = Vec::new();
        let Some(source) = new.source else {
            return Err(GatewayError::invalid("endpoint.source", "required"));
        };
        let credential = Some(new.credential.trim().to_owned()).filter(|c| !c.is_empty());
        match &credential {
            None if source.needs_key() => violations.push(FieldViolation::new(
                "endpoint.credential",
                format!("required for {source}: the credential holding its verification key"),
            )),
            Some(name) if !is_credential_name(name) => violations.push(FieldViolation::new(
                "endpoint.credential",
                "must be credentials/{id}",
            )),
            _ => {}
        }
        let topic = Some(new.sns_topic_arn.trim().to_owned()).filter(|t| !t.is_empty());
        match (&topic, source) {
            (None, Source::Sns) => violations.push(FieldViolation::new(
                "endpoint.sns_topic_arn",
                "required for sns: the topic whose messages are accepted",
            )),
            (Some(arn), Source::Sns) if !arn.starts_with("arn:aws") || arn.len() > 256 => {
                violations.push(FieldViolation::new(
                    "endpoint.sns_topic_arn",
                    "must be an SNS topic ARN (arn:aws:sns:…)",
                ));
            }
            (Some(_), source) if source != Source::Sns => violations.push(FieldViolation::new(
                "endpoint.sns_topic_arn",
                "only for sns endpoints",
            )),
            _ => {}
        }
        for (field, value, max) in [
            ("endpoint.display_name", new.display_name.as_str(), 256),
            ("endpoint.credential", new.credential.as_str(), 256),
            ("endpoint.sns_topic_arn", new.sns_topic_arn.as_str(), 256),
            ("request_id", new.request_id.as_deref().unwrap_or(""), 128),
        ] {
            // PostgreSQL refuses NUL in text.
            if value.len() > max || value.contains('\0') {
                violations.push(FieldViolation::new(
                    field,
                    format!("at most {max} bytes, without NUL characters"),
                ));
            }
        }
        if new
            .tolerance
            .is_some_and(|tolerance| tolerance > Duration::from_secs(7 * 24 * 3600))
        {
            violations.push(FieldViolation::new(
                "endpoint.timestamp_tolerance",
                "at most 7 days",
            ));
        }
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        let request_id = new.request_id.filter(|id| !id.is_empty());
        if let Some(request_id) = &request_id
            && let Some(existing) =
                store::endpoint_by_request_id(&self.inner.db, tenant, request_id).await?
        {
            return Ok(existing);
        }
        let endpoint = Endpoint {
            id: uuid::Uuid::new_v4().simple().to_string(),
            tenant: tenant.to_owned(),
            source,
            credential,
            display_name: new.display_name,
            tolerance: new.tolerance,
            sns_topic_arn: topic,
            create_time: switchyard_store::now_micros(),
        };
        match store::insert_endpoint(&self.inner.db, &endpoint, request_id.as_deref()).await {
            Ok(()) => Ok(endpoint),
            // A concurrent retry with the same request id won: its endpoint is ours.
            Err(err) if err.is_unique_violation() => {
                let request_id = request_id.as_deref().unwrap_or_default();
                store::endpoint_by_request_id(&self.inner.db, tenant, request_id)
                    .await?
                    .ok_or(GatewayError::Store(err))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// One of the tenant's endpoints.
    pub async fn get_endpoint(&self, tenant: &str, name: &str) -> Result<Endpoint, GatewayError> {
        let id = endpoint_id(name)?;
        store::endpoint(&self.inner.db, id)
            .await?
            .filter(|endpoint| endpoint.tenant == tenant)
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))
    }

    /// A page of the tenant's endpoints, oldest first.
    pub async fn list_endpoints(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Endpoint>, GatewayError> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint("endpoints");
        let after: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut items =
            store::list_endpoints(&self.inner.db, tenant, after.as_deref(), size + 1).await?;
        let next_page_token = page::next_token(&mut items, size, &fingerprint, |e| e.id.clone());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Deletes one of the tenant's endpoints; its events stay.
    pub async fn delete_endpoint(&self, tenant: &str, name: &str) -> Result<(), GatewayError> {
        let id = endpoint_id(name)?;
        if store::delete_endpoint(&self.inner.db, tenant, id).await? {
            Ok(())
        } else {
            Err(GatewayError::NotFound(name.to_owned()))
        }
    }

    /// A page of the tenant's events, newest first.
    pub async fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Event>, GatewayError> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&format!("{filter:?}"));
        let before: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let violations = delivery::selector_violations("", &[], &filter.expression);
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        // Read in batches from the cursor. A page ends when it is full, when its events' data
        // passes the byte budget (the first always fits), or, with an expression, when
        // MAX_SCANNED events were looked at: the token then resumes after the last one read,
        // whether it matched or not.
        let searching = !filter.expression.is_empty();
        let expression = delivery::Filter::new(&filter.expression);
        let batch_size = if searching { SCAN_BATCH } else { size + 1 };
        let mut items = Vec::new();
        let mut cursor = before;
        let (mut scanned, mut bytes, mut more) = (0, 0, false);
        'pages: loop {
            let batch = store::list_events(
                &self.inner.db,
                tenant,
                filter,
                cursor.as_deref(),
                batch_size,
            )
            .await?;
            let last_batch = batch.len() < batch_size;
            for event in batch {
                if searching && scanned >= MAX_SCANNED {
                    more = true;
                    break 'pages;
                }
                scanned += 1;
                if !expression.matches(&event) {
                    cursor = Some(event.id);
                    continue;
                }
                let len = event.data.to_string().len();
                if items.len() == size || (!items.is_empty() && bytes + len > MAX_PAGE_DATA_BYTES) {
                    more = true;
                    break 'pages;
                }
                bytes += len;
                cursor = Some(event.id.clone());
                items.push(event);
            }
            if last_batch {
                break;
            }
        }
        let next_page_token = match (more, cursor) {
            (true, Some(cursor)) => page::encode_token(&cursor, &fingerprint),
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// One of the tenant's events, with its raw body.
    pub async fn get_event(&self, tenant: &str, name: &str) -> Result<Event, GatewayError> {
        let id = name
            .strip_prefix("events/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GatewayError::invalid("name", "must be events/{id}"))?;
        store::event(&self.inner.db, tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))
    }

    /// Receives a webhook for endpoint `endpoint_id` of `source`: verifies it, commits it (once
    /// per delivery id), and says what to answer. Nothing is stored for a request that does
    /// not verify.
    pub async fn receive(
        &self,
        source: &str,
        endpoint_id: &str,
        inbound: Inbound<'_>,
    ) -> Result<Receipt, ReceiveError> {
        let endpoint = match Source::parse(source) {
            Some(source) => store::endpoint(&self.inner.db, endpoint_id)
                .await?
                .filter(|endpoint| endpoint.source == source),
            None => None,
        }
        .ok_or(ReceiveError::UnknownEndpoint)?;
        let key = match &endpoint.credential {
            Some(credential) => self.key(&endpoint.tenant, credential).await.map_err(|err| {
                tracing::error!(tenant = %endpoint.tenant, credential, error = %err, "reading a webhook endpoint's key failed");
                ReceiveError::VerificationUnavailable
            })?,
            None => SecretString::from(String::new()),
        };
        let now = SystemTime::now();
        let policy = Policy {
            keys: key.expose_secret(),
            tolerance: endpoint
                .tolerance
                .or_else(|| endpoint.source.default_tolerance()),
            sns_topic_arn: endpoint.sns_topic_arn.as_deref(),
            now,
        };
        let verified = self
            .inner
            .verifier
            .verify(endpoint.source, inbound, policy)
            .await;
        let verified = match verified {
            Ok(verified) => verified,
            Err(err) if err.is_sender_fault() => return Err(ReceiveError::Refused(err)),
            Err(err) => {
                tracing::error!(endpoint = %endpoint.id, tenant = %endpoint.tenant, error = %err, "webhook endpoint cannot verify");
                return Err(ReceiveError::VerificationUnavailable);
            }
        };
        let receive_time = micros(now);
        let content_type = inbound
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let event = Event {
            id: uuid::Uuid::now_v7().simple().to_string(),
            tenant: endpoint.tenant.clone(),
            endpoint: endpoint.id.clone(),
            source: EventSource::Webhook(endpoint.source),
            event_type: verified.event_type,
            subject: verified.subject,
            time: verified.signed_at.map_or(receive_time, micros),
            receive_time,
            delivery_id: verified.delivery_id,
            data: verified.data,
            headers: verified.headers,
            content_type,
            raw_body: inbound.body.to_vec(),
        };
        // The event and its deliveries commit together (with whatever else is arriving),
        // before the sender is answered.
        let stored = self.inner.committer.commit(event).await?;
        // Confirmed on every delivery of the confirmation, so that one whose first visit failed
        // (and which SNS therefore sends again) is confirmed by the redelivery.
        if let Some(url) = &verified.confirm_subscription
            && let Err(err) = self.inner.confirmer.confirm(url).await
        {
            tracing::warn!(endpoint = %endpoint.id, error = %err, "confirming the SNS subscription failed");
            return Err(ReceiveError::Confirmation);
        }
        Ok(Receipt {
            duplicate: stored.duplicate,
            event_id: stored.event_id,
            answer: verified.answer,
        })
    }

    /// A key from the credentials service, reused for `key_cache_ttl`: endpoints' verification
    /// keys and subscriptions' signing secrets.
    pub(crate) async fn key(&self, tenant: &str, credential: &str) -> Result<SecretString, String> {
        let cache_key = (tenant.to_owned(), credential.to_owned());
        if let Some((key, at)) = self.inner.key_cache.lock().await.get(&cache_key)
            && at.elapsed() < self.inner.key_cache_ttl
        {
            return Ok(key.clone());
        }
        let key = self.inner.keys.key(tenant, credential).await?;
        let mut cache = self.inner.key_cache.lock().await;
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(cache_key, (key.clone(), Instant::now()));
        Ok(key)
    }
}

pub(crate) fn is_credential_name(name: &str) -> bool {
    name.strip_prefix("credentials/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

fn endpoint_id(name: &str) -> Result<&str, GatewayError> {
    name.strip_prefix("inboundEndpoints/")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| GatewayError::invalid("name", "must be inboundEndpoints/{id}"))
}
