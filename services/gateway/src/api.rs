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

use crate::domain::{Endpoint, Event, EventFilter, Gateway, GatewayError, NewEndpoint};

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

/// The source of a proto enum value; `Ok(None)` when unspecified.
fn source_of(field: &str, value: i32) -> Result<Option<Source>, Status> {
    Ok(match pb::Source::try_from(value) {
        Ok(pb::Source::Unspecified) => None,
        Ok(pb::Source::Github) => Some(Source::GitHub),
        Ok(pb::Source::Gitlab) => Some(Source::GitLab),
        Ok(pb::Source::Slack) => Some(Source::Slack),
        Ok(pb::Source::Discord) => Some(Source::Discord),
        Ok(pb::Source::Sendgrid) => Some(Source::SendGrid),
        Ok(pb::Source::Sns) => Some(Source::Sns),
        Ok(pb::Source::Jenkins) => Some(Source::Jenkins),
        Ok(pb::Source::StandardWebhooks) => Some(Source::StandardWebhooks),
        Err(_) => return Err(invalid(FieldViolation::new(field, "unknown source"))),
    })
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
        endpoint: format!("inboundEndpoints/{}", event.endpoint),
        source: source_to_proto(event.source).into(),
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
    async fn create_inbound_endpoint(
        &self,
        request: Request<pb::CreateInboundEndpointRequest>,
    ) -> Result<Response<pb::CreateInboundEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let endpoint = request
            .into_inner()
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
            source: source_of("source", request.source)?,
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
}
