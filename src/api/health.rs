//! Liveness and readiness.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::error::ApiError;
use super::ApiTags;
use crate::server::AppState;

#[derive(Debug, Object)]
pub struct HealthStatus {
    /// `ok` for liveness, `ready` for readiness.
    pub status: String,
}

#[derive(Debug, Object)]
pub struct ReadyStatus {
    /// `ready`.
    pub status: String,
    /// This node's id (`[cluster] node_id`; default: the hostname and a hash of the data
    /// dir's path).
    pub node: String,
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up and serving HTTP. No authentication (a credential that
    /// is sent is still checked: a bad one is 401).
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Result<Json<HealthStatus>, ApiError> {
        Ok(Json(HealthStatus {
            status: "ok".into(),
        }))
    }

    /// Readiness: 503 until the event store and the workers are up. No authentication.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&AppState>) -> Result<Json<ReadyStatus>, ApiError> {
        if state.is_ready() {
            Ok(Json(ReadyStatus {
                status: "ready".into(),
                node: state.node_id().to_string(),
            }))
        } else {
            Err(ApiError::unavailable("starting up", 1))
        }
    }
}
