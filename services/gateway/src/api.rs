//! The gRPC face of the gateway's domain: proto conversions, the scope table, and the one place
//! where domain errors become statuses.

use switchyard_auth::{ScopeTable, principal};
use switchyard_kit::convert::{
    checked_duration, checked_micros, duration, json_to_value, timestamp,
};
use switchyard_kit::{ApiError, FieldViolation};
use switchyard_proto::events::v1 as pb;
use switchyard_proto::events::v1::event_service_server::{EventService, EventServiceServer};
use switchyard_webhooks::Source;
use tonic::{Request, Response, Status};

use crate::domain::delivery::{
    Attempt, Delivery, DeliveryState, NewSubscription, Subscription, SubscriptionState,
};
use crate::domain::{
    Endpoint, Event, EventFilter, EventSource, Gateway, GatewayError, NewEndpoint,
};

/// Reading endpoints and events.
pub const READ: &str = "events.read";
/// Creating and deleting endpoints.
pub const WRITE: &str = "events.write";

/// The scope of every method of `EventService`.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "switchyard.events.v1.EventService",
    methods: &[
        ("CreateInboundEndpoint", WRITE),
        ("GetInboundEndpoint", READ),
        ("ListInboundEndpoints", READ),
        ("DeleteInboundEndpoint", WRITE),
        ("ListEvents", READ),
        ("GetEvent", READ),
        ("SubscribeEvents", READ),
        ("CreateSubscription", WRITE),
        ("GetSubscription", READ),
        ("ListSubscriptions", READ),
        ("DeleteSubscription", WRITE),
        ("EnableSubscription", WRITE),
        ("ListDeliveries", READ),
        ("ListAttempts", READ),
        ("GetAttempt", READ),
        ("ReplayDeliveries", WRITE),
        ("PurgeDeadLetters", WRITE),
        ("SendTestEvent", WRITE),
    ],
    checked_by_handler: &[],
};

/// The ErrorInfo domain of this service's errors.
pub const ERROR_DOMAIN: &str = "events.switchyard.dev";

/// Turns a domain error into the status a caller sees.
pub fn api_error(err: GatewayError) -> ApiError {
    match err {
        GatewayError::Invalid(violations) => ApiError::invalid_argument(violations),
        GatewayError::NotFound(name) => ApiError::not_found(&name),
        GatewayError::Precondition { reason, message } => {
            ApiError::new(tonic::Code::FailedPrecondition, reason, message)
        }
        GatewayError::Unavailable(message) => {
            ApiError::new(tonic::Code::Unavailable, "SHUTTING_DOWN", message)
                .with_retry_after(std::time::Duration::from_secs(1))
        }
        GatewayError::Unauthenticated(message) => ApiError::unauthenticated(message),
        GatewayError::Store(cause) => ApiError::internal(cause),
    }
    .with_domain(ERROR_DOMAIN)
}

fn status(err: GatewayError) -> Status {
    api_error(err).into_status()
}

fn invalid(violation: FieldViolation) -> Status {
    status(GatewayError::Invalid(vec![violation]))
}

fn tenant_of<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(principal(request)?.tenant.clone())
}

fn source_to_proto(source: Source) -> pb::Source {
    match source {
        Source::GitHub => pb::Source::Github,
        Source::GitLab => pb::Source::Gitlab,
        Source::Slack => pb::Source::Slack,
        Source::Discord => pb::Source::Discord,
        Source::SendGrid => pb::Source::Sendgrid,
        Source::Sns => pb::Source::Sns,
        Source::Jenkins => pb::Source::Jenkins,
        Source::StandardWebhooks => pb::Source::StandardWebhooks,
    }
}

fn event_source_to_proto(source: EventSource) -> pb::Source {
    match source {
        EventSource::Webhook(source) => source_to_proto(source),
        EventSource::Switchyard => pb::Source::Switchyard,
    }
}

/// The source of a proto enum value; `Ok(None)` when unspecified.
fn event_source_of(field: &str, value: i32) -> Result<Option<EventSource>, Status> {
    Ok(match pb::Source::try_from(value) {
        Ok(pb::Source::Unspecified) => None,
        Ok(pb::Source::Github) => Some(EventSource::Webhook(Source::GitHub)),
        Ok(pb::Source::Gitlab) => Some(EventSource::Webhook(Source::GitLab)),
        Ok(pb::Source::Slack) => Some(EventSource::Webhook(Source::Slack)),
        Ok(pb::Source::Discord) => Some(EventSource::Webhook(Source::Discord)),
        Ok(pb::Source::Sendgrid) => Some(EventSource::Webhook(Source::SendGrid)),
        Ok(pb::Source::Sns) => Some(EventSource::Webhook(Source::Sns)),
        Ok(pb::Source::Jenkins) => Some(EventSource::Webhook(Source::Jenkins)),
        Ok(pb::Source::StandardWebhooks) => Some(EventSource::Webhook(Source::StandardWebhooks)),
        Ok(pb::Source::Switchyard) => Some(EventSource::Switchyard),
        Err(_) => return Err(invalid(FieldViolation::new(field, "unknown source"))),
    })
}

/// A webhook sender of a proto enum value: Switchyard sends none.
fn source_of(field: &str, value: i32) -> Result<Option<Source>, Status> {
    match event_source_of(field, value)? {
        None => Ok(None),
        Some(EventSource::Webhook(source)) => Ok(Some(source)),
        Some(EventSource::Switchyard) => Err(invalid(FieldViolation::new(
            field,
            "switchyard sends no webhooks",
        ))),
    }
}

fn endpoint_to_proto(endpoint: &Endpoint) -> pb::InboundEndpoint {
    pb::InboundEndpoint {
        name: format!("inboundEndpoints/{}", endpoint.id),
        source: source_to_proto(endpoint.source).into(),
        credential: endpoint.credential.clone().unwrap_or_default(),
        display_name: endpoint.display_name.clone(),
        timestamp_tolerance: endpoint.tolerance.map(duration),
        sns_topic_arn: endpoint.sns_topic_arn.clone().unwrap_or_default(),
        url_path: endpoint.url_path(),
        create_time: Some(timestamp(endpoint.create_time)),
    }
}

fn event_to_proto(event: Event) -> pb::Event {
    pb::Event {
        name: format!("events/{}", event.id),
        tenant: event.tenant,
        endpoint: if event.endpoint.is_empty() {
            String::new()
        } else {
            format!("inboundEndpoints/{}", event.endpoint)
        },
        source: event_source_to_proto(event.source).into(),
        r#type: event.event_type,
        subject: event.subject.unwrap_or_default(),
        time: Some(timestamp(event.time)),
        receive_time: Some(timestamp(event.receive_time)),
        delivery_id: event.delivery_id,
        data: Some(json_to_value(&event.data)),
        headers: event.headers.into_iter().collect(),
        raw_body: event.raw_body,
        content_type: event.content_type,
    }
}

fn subscription_to_proto(subscription: &Subscription) -> pb::Subscription {
    pb::Subscription {
        name: format!("subscriptions/{}", subscription.id),
        display_name: subscription.display_name.clone(),
        event_types: subscription.event_types.clone(),
        sources: subscription
            .sources
            .iter()
            .map(|source| event_source_to_proto(*source).into())
            .collect(),
        filter: subscription.filter.clone(),
        url: subscription.url.clone(),
        signing_credential: subscription.signing_credential.clone(),
        retry_schedule: subscription
            .retry_schedule
            .iter()
            .copied()
            .map(duration)
            .collect(),
        timeout: Some(duration(subscription.timeout)),
        state: match subscription.state {
            SubscriptionState::Active => pb::SubscriptionState::Active,
            SubscriptionState::Disabled => pb::SubscriptionState::Disabled,
        }
        .into(),
        disabled_reason: subscription.disabled_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp(subscription.create_time)),
    }
}

fn delivery_to_proto(delivery: &Delivery) -> pb::Delivery {
    pb::Delivery {
        name: format!("deliveries/{}", delivery.id),
        subscription: format!("subscriptions/{}", delivery.subscription),
        event: format!("events/{}", delivery.event),
        state: match delivery.state {
            DeliveryState::Pending => pb::DeliveryState::Pending,
            DeliveryState::Succeeded => pb::DeliveryState::Succeeded,
            DeliveryState::Dead => pb::DeliveryState::Dead,
        }
        .into(),
        attempt_count: delivery.attempt_count,
        next_attempt_time: (delivery.state == DeliveryState::Pending)
            .then(|| timestamp(delivery.next_attempt_at)),
        last_status: delivery.last_status,
        last_error: delivery.last_error.clone().unwrap_or_default(),
        create_time: Some(timestamp(delivery.create_time)),
        event_type: delivery.event_type.clone(),
    }
}

fn attempt_to_proto(attempt: Attempt) -> pb::Attempt {
    pb::Attempt {
        name: format!(
            "deliveries/{}/attempts/{}",
            attempt.delivery, attempt.number
        ),
        start_time: Some(timestamp(attempt.start_time)),
        latency: Some(duration(std::time::Duration::from_micros(
            attempt.latency_us.max(0).unsigned_abs(),
        ))),
        status: attempt.status,
        error: attempt.error.unwrap_or_default(),
        request_headers: attempt.request_headers.into_iter().collect(),
        response_body: attempt.response_body,
    }
}

fn optional_micros(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Status> {
    ts.map(|t| checked_micros(field, t))
        .transpose()
        .map_err(invalid)
}

/// The messages of a SubscribeEvents stream.
pub type EventStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::SubscribeEventsResponse, Status>> + Send>,
>;

/// `switchyard.events.v1.EventService` over the domain.
#[derive(Debug, Clone)]
pub struct EventApi {
    domain: Gateway,
}

impl EventApi {
    /// The API over `domain`.
    pub fn new(domain: Gateway) -> Self {
        EventApi { domain }
    }

    /// As a tonic server accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> EventServiceServer<Self> {
        EventServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        use futures::StreamExt;
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let sources = request
            .sources
            .iter()
            .map(|value| {
                event_source_of("sources", *value)?.ok_or_else(|| {
                    invalid(FieldViolation::new(
                        "sources",
                        "SOURCE_UNSPECIFIED is not a source",
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = crate::domain::stream::StreamSpec {
            event_types: request.event_types,
            sources,
            filter: request.filter,
            cursor: Some(request.cursor).filter(|c| !c.is_empty()),
            start_time: optional_micros("start_time", request.start_time.as_ref())?,
        };
        let events = self.domain.event_stream(&tenant, spec).map_err(status)?;
        let messages = events.map(|item| {
            item.map(|(event, cursor)| pb::SubscribeEventsResponse {
                event: Some(event_to_proto(event)),
                cursor,
            })
            .map_err(status)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn create_inbound_endpoint(
        &self,
        request: Request<pb::CreateInboundEndpointRequest>,
    ) -> Result<Response<pb::CreateInboundEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let endpoint = request
            .endpoint
            .ok_or_else(|| invalid(FieldViolation::new("endpoint", "required")))?;
        let tolerance = endpoint
            .timestamp_tolerance
            .as_ref()
            .map(|d| checked_duration("endpoint.timestamp_tolerance", d))
            .transpose()
            .map_err(invalid)?;
        let new = NewEndpoint {
            source: source_of("endpoint.source", endpoint.source)?,
            credential: endpoint.credential,
            display_name: endpoint.display_name,
            tolerance,
            sns_topic_arn: endpoint.sns_topic_arn,
            request_id: Some(request.request_id),
        };
        let created = self
            .domain
            .create_endpoint(&tenant, new)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateInboundEndpointResponse {
            endpoint: Some(endpoint_to_proto(&created)),
        }))
    }

    async fn get_inbound_endpoint(
        &self,
        request: Request<pb::GetInboundEndpointRequest>,
    ) -> Result<Response<pb::GetInboundEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let endpoint = self
            .domain
            .get_endpoint(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetInboundEndpointResponse {
            endpoint: Some(endpoint_to_proto(&endpoint)),
        }))
    }

    async fn list_inbound_endpoints(
        &self,
        request: Request<pb::ListInboundEndpointsRequest>,
    ) -> Result<Response<pb::ListInboundEndpointsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let page = self
            .domain
            .list_endpoints(&tenant, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListInboundEndpointsResponse {
            endpoints: page.items.iter().map(endpoint_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_inbound_endpoint(
        &self,
        request: Request<pb::DeleteInboundEndpointRequest>,
    ) -> Result<Response<pb::DeleteInboundEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        self.domain
            .delete_endpoint(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteInboundEndpointResponse {}))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let endpoint = match request.endpoint.as_str() {
            "" => None,
            name => Some(
                name.strip_prefix("inboundEndpoints/")
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        invalid(FieldViolation::new(
                            "endpoint",
                            "must be inboundEndpoints/{id}",
                        ))
                    })?
                    .to_owned(),
            ),
        };
        let filter = EventFilter {
            endpoint,
            source: event_source_of("source", request.source)?,
            event_type: Some(request.r#type).filter(|t| !t.is_empty()),
            subject: Some(request.subject).filter(|s| !s.is_empty()),
            received_after: request
                .received_after
                .as_ref()
                .map(|t| checked_micros("received_after", t))
                .transpose()
                .map_err(invalid)?,
            received_before: request
                .received_before
                .as_ref()
                .map(|t| checked_micros("received_before", t))
                .transpose()
                .map_err(invalid)?,
            expression: request.filter,
        };
        let page = self
            .domain
            .list_events(&tenant, &filter, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.items.into_iter().map(event_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let event = self
            .domain
            .get_event(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(event_to_proto(event)),
        }))
    }

    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let subscription = request
            .subscription
            .ok_or_else(|| invalid(FieldViolation::new("subscription", "required")))?;
        let sources = subscription
            .sources
            .iter()
            .map(|value| {
                event_source_of("subscription.sources", *value)?.ok_or_else(|| {
                    invalid(FieldViolation::new(
                        "subscription.sources",
                        "SOURCE_UNSPECIFIED is not a source",
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let retry_schedule = subscription
            .retry_schedule
            .iter()
            .map(|d| checked_duration("subscription.retry_schedule", d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let timeout = subscription
            .timeout
            .as_ref()
            .map(|d| checked_duration("subscription.timeout", d))
            .transpose()
            .map_err(invalid)?;
        let created = self
            .domain
            .create_subscription(
                &tenant,
                NewSubscription {
                    display_name: subscription.display_name,
                    event_types: subscription.event_types,
                    sources,
                    filter: subscription.filter,
                    url: subscription.url,
                    signing_credential: subscription.signing_credential,
                    retry_schedule,
                    timeout,
                    request_id: Some(request.request_id),
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription: Some(subscription_to_proto(&created)),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let subscription = self
            .domain
            .get_subscription(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(subscription_to_proto(&subscription)),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let page = self
            .domain
            .list_subscriptions(&tenant, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page.items.iter().map(subscription_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        self.domain
            .delete_subscription(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn enable_subscription(
        &self,
        request: Request<pb::EnableSubscriptionRequest>,
    ) -> Result<Response<pb::EnableSubscriptionResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let subscription = self
            .domain
            .enable_subscription(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnableSubscriptionResponse {
            subscription: Some(subscription_to_proto(&subscription)),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let state = match pb::DeliveryState::try_from(request.state) {
            Ok(pb::DeliveryState::Unspecified) => None,
            Ok(pb::DeliveryState::Pending) => Some(DeliveryState::Pending),
            Ok(pb::DeliveryState::Succeeded) => Some(DeliveryState::Succeeded),
            Ok(pb::DeliveryState::Dead) => Some(DeliveryState::Dead),
            Err(_) => return Err(invalid(FieldViolation::new("state", "unknown state"))),
        };
        let page = self
            .domain
            .list_deliveries(
                &tenant,
                &request.subscription,
                state,
                request.page_size,
                &request.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: page.items.iter().map(delivery_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let attempts = self
            .domain
            .list_attempts(&tenant, &request.get_ref().delivery)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAttemptsResponse {
            attempts: attempts.into_iter().map(attempt_to_proto).collect(),
        }))
    }

    async fn get_attempt(
        &self,
        request: Request<pb::GetAttemptRequest>,
    ) -> Result<Response<pb::GetAttemptResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let attempt = self
            .domain
            .get_attempt(&tenant, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetAttemptResponse {
            attempt: Some(attempt_to_proto(attempt)),
        }))
    }

    async fn replay_deliveries(
        &self,
        request: Request<pb::ReplayDeliveriesRequest>,
    ) -> Result<Response<pb::ReplayDeliveriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let since = optional_micros("since", request.since.as_ref())?;
        let delivery = Some(request.delivery.as_str()).filter(|d| !d.is_empty());
        let replayed = self
            .domain
            .replay_deliveries(&tenant, &request.subscription, delivery, since)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReplayDeliveriesResponse {
            replayed: i64::try_from(replayed).unwrap_or(i64::MAX),
        }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let before = optional_micros("before", request.before.as_ref())?;
        let purged = self
            .domain
            .purge_dead_letters(&tenant, &request.subscription, before)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PurgeDeadLettersResponse {
            purged: i64::try_from(purged).unwrap_or(i64::MAX),
        }))
    }

    async fn send_test_event(
        &self,
        request: Request<pb::SendTestEventRequest>,
    ) -> Result<Response<pb::SendTestEventResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let delivery = self
            .domain
            .send_test_event(&tenant, &request.get_ref().subscription)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SendTestEventResponse {
            delivery: Some(delivery_to_proto(&delivery)),
        }))
    }
}
