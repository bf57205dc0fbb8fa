//! `/status` beside the metrics: every limited cgroup as JSON, the same
//! document `podshaper list -o json` prints ([`CgroupDocument`]). Read-only,
//! on the metrics address, so that a client off the node reaches it through
//! the API server's pods/proxy (`kubectl podshaper`) with no access to the
//! daemon's socket.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use podshaper_api::CgroupDocument;

use crate::service::{self, State};

/// `GET /status`, served beside the metrics (crate::metrics::serve).
pub(crate) fn routes(state: Arc<State>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(state)
}

/// Lists on a thread of the blocking pool: listing locks the node
/// (crate::service::State::blocking says why).
async fn status(AxumState(state): AxumState<Arc<State>>) -> Response {
    match state.blocking(service::list).await {
        Ok(Ok(list)) => Json(
            list.cgroups
                .iter()
                .map(CgroupDocument::from)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Ok(Err(status)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list the limited cgroups: {}\n", status.message()),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list the limited cgroups: {e}\n"),
        )
            .into_response(),
    }
}
