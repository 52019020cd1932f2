//! A raw HTTP/1.1 client for the fakes' own tests: it writes requests byte for byte and reads
//! responses as they come (status, headers, a `Content-Length`, chunked or closing body), so that
//! tests see exactly what a fake sends and can send what a library client never would.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossily, for a binary one).
    pub body: String,
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A keep-alive HTTP/1.1 connection to a fake.
pub struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    /// Connects to the host of `base_url`, such as `http://127.0.0.1:41234/v1`.
    pub async fn open(base_url: &str) -> Connection {
        let address = base_url.trim_start_matches("http://");
        let host = address.split('/').next().unwrap_or(address).to_owned();
        let stream = TcpStream::connect(&host).await.unwrap();
        Connection {
            stream: BufReader::new(stream),
            host,
        }
    }

    /// The `Host` of the requests, for raw ones.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Posts a JSON `body` with these headers (besides `Host`, `Content-Type` and
    /// `Content-Length`).
    pub async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        self.post_bytes(path, headers, "application/json", body.as_bytes())
            .await
    }

    /// Posts a body with its content type, such as a form, and these headers.
    pub async fn post_bytes(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> HttpResponse {
        let headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.send_bytes(&request).await
    }

    /// A `GET` without headers.
    pub async fn get(&mut self, path: &str) -> HttpResponse {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.send(&request).await
    }

    /// Sends a raw request and reads its response.
    pub async fn send(&mut self, request: &str) -> HttpResponse {
        self.send_bytes(request.as_bytes()).await
    }

    /// Sends raw bytes and reads the response.
    pub async fn send_bytes(&mut self, request: &[u8]) -> HttpResponse {
        self.stream.write_all(request).await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            let Some((name, value)) = line.trim_end().split_once(": ") else {
                break;
            };
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: String::new(),
            bytes: Vec::new(),
        };
        let mut body = Vec::new();
        if let Some(length) = response.header("content-length") {
            body.resize(length.parse().unwrap(), 0);
            self.stream.read_exact(&mut body).await.unwrap();
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.unwrap();
                let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            self.stream.read_to_end(&mut body).await.unwrap();
        }
        response.body = String::from_utf8_lossy(&body).into_owned();
        response.bytes = body;
        response
    }

    /// Sends a raw request for a chunked event stream and reads what arrives, line by line, until
    /// it holds `until` and ends with a whole chunk; the rest of the stream stays unread.
    pub async fn send_until(&mut self, request: &str, until: &str) -> String {
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let mut received = String::new();
        while !received.contains(until) || !received.ends_with("\n\n\r\n") {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            received.push_str(&line);
        }
        received
    }

    /// Whether nothing more arrives for `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        let mut more = [0u8; 1];
        tokio::time::timeout(wait, self.stream.read(&mut more))
            .await
            .is_err()
    }

    /// Whether the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte).await, Ok(0) | Err(_))
    }
}
