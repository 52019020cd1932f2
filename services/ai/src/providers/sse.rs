//! Server-sent events of a provider's streaming response, as JSON values.

use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::ProviderError;

/// One event: its `event:` name (empty when absent) and its `data:` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type.
    pub event: String,
    /// The data.
    pub data: String,
}

/// The events of a response body.
pub fn events(response: reqwest::Response) -> BoxStream<'static, Result<SseEvent, ProviderError>> {
    parse(response.bytes_stream())
}

fn parse<S, E>(bytes: S) -> BoxStream<'static, Result<SseEvent, ProviderError>>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    bytes
        .eventsource()
        .map(|event| match event {
            Ok(event) => Ok(SseEvent {
                event: event.event,
                data: event.data,
            }),
            Err(err) => Err(ProviderError::Unavailable(format!(
                "reading the stream: {err}"
            ))),
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_split_across_reads_are_joined() {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"data: {\"a\"")),
            Ok(bytes::Bytes::from_static(
                b": 1}\n\nevent: ping\ndata: {}\n\n",
            )),
            Ok(bytes::Bytes::from_static(b"data: [DONE]\n\n")),
        ];
        let events: Vec<SseEvent> = parse(futures::stream::iter(pieces))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(events[0].data, "{\"a\": 1}");
        assert_eq!(
            (events[1].event.as_str(), events[1].data.as_str()),
            ("ping", "{}")
        );
        assert_eq!(events[2].data, "[DONE]");
    }
}
