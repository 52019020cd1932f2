//! One way to run a Switchyard service.
//!
//! - [`config`]: built-in defaults, then a TOML file, then `SWITCHYARD_*` environment variables.
//! - [`error`]: the error model: [`ApiError`] carries a gRPC code, a `google.rpc.ErrorInfo`
//!   reason, field violations and retry hints, and becomes a `tonic::Status` or an HTTP JSON error.
//! - [`grpc`]: the gRPC host: health (`grpc.health.v1`), reflection (v1 and v1alpha), and the tower
//!   layers every RPC passes through (observe, load shedding, deadline, authentication).
//! - [`http`]: the HTTP edge on its own port: `/healthz`, `/readyz`, `/metrics`, and the routes later
//!   services mount, behind the same authentication.
//! - [`shutdown`], [`telemetry`]: SIGTERM/SIGINT handling and logging/metrics set-up.
//!
//! A service crate provides a tonic service and its scope table; the binary puts them in a
//! [`grpc::Host`] and calls [`grpc::Host::serve`] with listeners it bound, so tests bind port 0.

pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod http;
pub mod outbound;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use auth::{Authenticator, Target};
pub use error::{ApiError, FieldViolation};
