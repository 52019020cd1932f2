//! `SubscribeEvents`: the tenant's events, oldest first, from a cursor, for internal consumers.
//!
//! The cursor is the last event's id. Ids are time-ordered (UUID v7) but an event may commit a
//! little after one with a later id (another request, another replica): the stream therefore
//! reads only events received at least `SETTLE` ago, so that a reader never passes an id that
//! a commit still in flight would fill in behind it.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use futures::stream;

use super::delivery::{Filter, selector_violations, selects};
use super::{Event, EventSource, Gateway, GatewayError, Micros};
use crate::store;

/// How old an event must be before it is streamed: longer than any commit takes.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Events read at once.
const BATCH: usize = 100;

/// What a stream carries.
#[derive(Debug, Clone, Default)]
pub struct StreamSpec {
    /// Type patterns; empty: all.
    pub event_types: Vec<String>,
    /// Sources; empty: all.
    pub sources: Vec<EventSource>,
    /// CEL, or empty.
    pub filter: String,
    /// Resume after this cursor.
    pub cursor: Option<String>,
    /// Without a cursor: from this receive time; `None`: from now.
    pub start_time: Option<Micros>,
}

struct State {
    gateway: Gateway,
    tenant: String,
    spec: StreamSpec,
    after: String,
    since: Micros,
    ready: VecDeque<Event>,
    /// The spec's filter, compiled once.
    filter: Filter,
    /// The shutdown error was sent: the stream is over.
    ended: bool,
}

impl Gateway {
    /// The tenant's events matching `spec`, each with its cursor, until the caller stops reading.
    pub fn event_stream(
        &self,
        tenant: &str,
        spec: StreamSpec,
    ) -> Result<
        impl Stream<Item = Result<(Event, String), GatewayError>> + Send + 'static,
        GatewayError,
    > {
        let violations = selector_violations("", &spec.event_types, &spec.filter);
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        let after = spec.cursor.clone().unwrap_or_default();
        if after.len() > 64 || !after.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(GatewayError::invalid(
                "cursor",
                "not a cursor of this stream",
            ));
        }
        let since = match (&spec.cursor, spec.start_time) {
            (Some(_), _) => i64::MIN,
            (None, Some(start)) => start,
            (None, None) => switchyard_store::now_micros(),
        };
        let spec_filter = spec.filter.clone();
        let state = State {
            gateway: self.clone(),
            tenant: tenant.to_owned(),
            spec,
            after,
            since,
            ready: VecDeque::new(),
            filter: Filter::new(&spec_filter),
            ended: false,
        };
        Ok(stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.ready.pop_front() {
                    let cursor = event.id.clone();
                    return Some((Ok((event, cursor)), state));
                }
                let settled = switchyard_store::now_micros()
                    - i64::try_from(SETTLE.as_micros()).unwrap_or(i64::MAX);
                let batch = store::events_after(
                    &state.gateway.inner.db,
                    &state.tenant,
                    &state.after,
                    state.since,
                    settled,
                    BATCH,
                )
                .await;
                match batch {
                    Err(err) => return Some((Err(err.into()), state)),
                    Ok(events) if events.is_empty() => {
                        let shutdown = state.gateway.inner.shutdown.clone();
                        tokio::select! {
                            () = shutdown.cancelled() => {
                                if state.ended {
                                    return None;
                                }
                                state.ended = true;
                                let stopping = GatewayError::Unavailable(
                                    "the server is stopping; resume from the last cursor".into(),
                                );
                                return Some((Err(stopping), state));
                            }
                            () = tokio::time::sleep(POLL) => {}
                        }
                    }
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            state.after = last.id.clone();
                        }
                        let (spec, filter) = (&state.spec, &state.filter);
                        state.ready.extend(events.into_iter().filter(|event| {
                            selects(&spec.event_types, &spec.sources, filter, event)
                        }));
                    }
                }
            }
        }))
    }
}
