//! Generated code for the Switchyard APIs (`proto/`), one module per package, and the encoded file
//! descriptor set that the servers publish through gRPC reflection.

#![allow(clippy::all, missing_debug_implementations, unused_qualifications)]

/// Every Switchyard proto file, encoded as a `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");

/// `google.api`: the HTTP annotations (`google.api.http`) that the gateway's REST routes follow.
pub mod google {
    /// The `google.api` package.
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// `switchyard.ai.v1`: LLM providers behind one API.
pub mod ai {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.ai.v1");
    }
}

/// `switchyard.common.v1`: messages shared by every API.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.common.v1");
    }
}

/// `switchyard.credentials.v1`: credential storage, rotation, audit and backup.
pub mod credentials {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.credentials.v1");
    }
}

/// `switchyard.events.v1`: webhook ingress and the event log.
pub mod events {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.events.v1");
    }
}

/// `switchyard.gateway.v1`: the API gateway's own resources (API keys).
pub mod gateway {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.gateway.v1");
    }
}

/// `switchyard.oauth.v1`: OAuth2 connections to outside platforms.
pub mod oauth {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("switchyard.oauth.v1");
    }
}
