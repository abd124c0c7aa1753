//! The gRPC side: one tonic channel (one HTTP/2 connection) per worker,
//! calling `TransferBulk` with the same bulks the HTTP workers post.

use std::net::SocketAddr;

use ledger::grpc::pb;
use ledger::grpc::pb::ledger_service_client::LedgerServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::driver::{CallResult, Worker};

/// A [`Worker`] calling `TransferBulk` on a channel of its own.
pub struct GrpcWorker {
    address: SocketAddr,
    client: Option<LedgerServiceClient<Channel>>,
    message: pb::TransferBulkRequest,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    transfers_per_bulk: u64,
    key_prefix: Option<String>,
    sequence: u64,
}

impl GrpcWorker {
    pub fn new(
        address: SocketAddr,
        message: pb::TransferBulkRequest,
        api_key: &str,
        key_prefix: Option<String>,
    ) -> GrpcWorker {
        GrpcWorker {
            address,
            client: None,
            transfers_per_bulk: message.credit_transfers.len() as u64,
            message,
            authorization: format!("Bearer {api_key}").parse().expect("an API key is ASCII"),
            key_prefix,
            sequence: 0,
        }
    }
}

impl Worker for GrpcWorker {
    async fn call(&mut self) -> CallResult {
        if self.client.is_none() {
            match LedgerServiceClient::connect(format!("http://{}", self.address)).await {
                Ok(client) => self.client = Some(client),
                Err(error) => return CallResult::Failed(format!("connect to {}: {error}", self.address)),
            }
        }
        self.sequence += 1;
        let mut message = self.message.clone();
        message.idempotency_key = self.key_prefix.as_ref().map(|p| format!("{p}-{}", self.sequence));
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let client = self.client.as_mut().expect("connected above");
        match client.transfer_bulk(request).await {
            Ok(_) => CallResult::Accepted {
                transfers: self.transfers_per_bulk,
            },
            Err(status) if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown => {
                self.client = None;
                CallResult::Failed(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) => CallResult::Refused {
                // The HTTP status the code stands for, for the report.
                status: match status.code() {
                    tonic::Code::InvalidArgument => 400,
                    tonic::Code::Unauthenticated => 401,
                    tonic::Code::PermissionDenied => 403,
                    tonic::Code::NotFound => 404,
                    tonic::Code::AlreadyExists => 409,
                    tonic::Code::FailedPrecondition => 422,
                    _ => 500,
                },
                body: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }
}
