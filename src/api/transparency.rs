//! `/api/v1/audit/...` for outside auditors (`view_audit_logs`): signed checkpoints of the
//! log's Merkle tree, the key that verifies them, inclusion and consistency proofs
//! (RFC 9162 sections 2.1.3 and 2.1.4), and the state of users, keys and models at a
//! point of the log.

use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{Object, OpenApi};

use super::error::ApiError;
use super::security::Auth;
use super::ApiTags;
use crate::audit::checkpointer::SignedCheckpoint;
use crate::audit::state::{state_at, At, StateAt};
use crate::auth::perm;
use crate::events::merkle::Hash;
use crate::events::{format_ts, EventQuery};
use crate::server::AppState;

fn hex(h: &Hash) -> String {
    hex::encode(h.0)
}

/// A signed checkpoint as recorded in the log.
#[derive(Debug, Object)]
pub struct CheckpointBody {
    /// Events the checkpoint covers (seq 1 to `tree_size`).
    pub tree_size: u64,
    /// RFC 6962 root hash of those events, lowercase hex.
    pub root_hash: String,
    /// Seq of the `audit.checkpoint` event that recorded it.
    pub event_seq: u64,
    /// RFC 3339.
    pub ts: String,
    /// The C2SP signed note (`tlog-checkpoint` text and an Ed25519 signature line).
    pub note: String,
}

impl From<SignedCheckpoint> for CheckpointBody {
    fn from(c: SignedCheckpoint) -> Self {
        Self {
            tree_size: c.tree_size,
            root_hash: hex(&c.root),
            event_seq: c.event_seq,
            ts: format_ts(&c.ts),
            note: c.note,
        }
    }
}

#[derive(Debug, Object)]
pub struct CheckpointPage {
    /// Newest first.
    pub checkpoints: Vec<CheckpointBody>,
    /// Pass as `cursor` for older checkpoints.
    #[oai(nullable)]
    pub next_cursor: Option<u64>,
}

/// The audit path of one event (RFC 9162 2.1.3).
#[derive(Debug, Object)]
pub struct InclusionProofBody {
    pub seq: u64,
    /// `seq - 1`: the leaf's index in the tree.
    pub leaf_index: u64,
    pub tree_size: u64,
    /// `SHA-256(0x00 || canonical_bytes)` of the event, hex.
    pub leaf_hash: String,
    /// Root of the tree of `tree_size` events, hex.
    pub root_hash: String,
    /// Sibling hashes from the leaf up, hex.
    pub path: Vec<String>,
}

/// The proof that the tree of `to` events extends the tree of `from` (RFC 9162 2.1.4).
#[derive(Debug, Object)]
pub struct ConsistencyProofBody {
    pub from: u64,
    pub to: u64,
    pub from_root: String,
    pub to_root: String,
    /// Hex hashes.
    pub path: Vec<String>,
}

pub struct TransparencyApi;

impl TransparencyApi {
    /// `n` or, when absent, the latest checkpoint's size.
    async fn size_or_latest(state: &AppState, n: Option<u64>) -> Result<u64, ApiError> {
        match n {
            Some(n) => Ok(n),
            None => match state.checkpoints().latest().await {
                Some(cp) => Ok(cp.tree_size),
                None => Ok(current(state).await?.tree_size),
            },
        }
    }
}

async fn current(state: &AppState) -> Result<SignedCheckpoint, ApiError> {
    state.checkpoints().current().await.map_err(|e| {
        match e.downcast::<crate::events::EventError>() {
            Ok(e) => ApiError::from(e),
            Err(e) => ApiError::internal(e),
        }
    })
}

fn check_size(field: &str, n: u64, head: u64) -> Result<(), ApiError> {
    if n == 0 || n > head {
        return Err(ApiError::field(
            field,
            format!("{field} must be between 1 and the log's size ({head})"),
        ));
    }
    Ok(())
}

#[OpenApi(tag = "ApiTags::Audit")]
impl TransparencyApi {
    /// The latest signed checkpoint of the log's Merkle tree, as a C2SP signed note. When
    /// events were committed after it, a checkpoint of the current head is signed first,
    /// so the answer always covers everything so far. Requires permission
    /// `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/checkpoint",
        method = "get",
        operation_id = "get_audit_checkpoint"
    )]
    async fn checkpoint(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
    ) -> Result<PlainText<String>, ApiError> {
        Ok(PlainText(current(&state).await?.note))
    }

    /// Signed checkpoints, newest first, cursor-paginated. Requires permission
    /// `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/checkpoints",
        method = "get",
        operation_id = "list_audit_checkpoints"
    )]
    async fn checkpoints(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<u64>>,
        /// 1 to 1000; default 100.
        limit: Query<Option<u32>>,
    ) -> Result<Json<CheckpointPage>, ApiError> {
        let limit = limit.0.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::field("limit", "limit must be between 1 and 1000"));
        }
        let page = state.store().query(&EventQuery {
            before: cursor.0,
            types: vec!["audit.checkpoint".into()],
            limit: limit as usize,
            newest_first: true,
            ..EventQuery::default()
        })?;
        Ok(Json(CheckpointPage {
            checkpoints: page
                .events
                .iter()
                .filter_map(SignedCheckpoint::from_envelope)
                .map(CheckpointBody::from)
                .collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// The note verifier key of the checkpoints (`<name>+<key id>+<base64>`). Fetch it
    /// once and keep it: a verifier that trusts whatever key the server shows today proves
    /// nothing. Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/public-key",
        method = "get",
        operation_id = "get_audit_public_key"
    )]
    async fn public_key(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
    ) -> Result<PlainText<String>, ApiError> {
        Ok(PlainText(format!(
            "{}\n",
            state.checkpoints().signer().verifier_key()
        )))
    }

    /// Proof that event `seq` is in the tree of `tree_size` events (default: the latest
    /// checkpoint's size), checkable with RFC 9162 section 2.1.3.2. Requires permission
    /// `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/proof/inclusion",
        method = "get",
        operation_id = "get_audit_inclusion_proof"
    )]
    async fn inclusion(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        seq: Query<u64>,
        tree_size: Query<Option<u64>>,
    ) -> Result<Json<InclusionProofBody>, ApiError> {
        let head = state.store().tree_size();
        let n = Self::size_or_latest(&state, tree_size.0).await?;
        check_size("tree_size", n, head)?;
        if seq.0 == 0 || seq.0 > n {
            return Err(ApiError::field(
                "seq",
                format!("seq must be between 1 and tree_size ({n})"),
            ));
        }
        let store = state.store().clone();
        let p = tokio::task::spawn_blocking(move || store.inclusion_proof(seq.0, n))
            .await
            .map_err(ApiError::internal)??;
        Ok(Json(InclusionProofBody {
            seq: p.seq,
            leaf_index: p.seq - 1,
            tree_size: p.tree_size,
            leaf_hash: hex(&p.leaf_hash),
            root_hash: hex(&p.root),
            path: p.path.iter().map(hex).collect(),
        }))
    }

    /// Proof that the tree of `to` events (default: the latest checkpoint's size) extends
    /// the tree of `from` events, checkable with RFC 9162 section 2.1.4.2: a checkpoint
    /// kept long ago still holds today. Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/proof/consistency",
        method = "get",
        operation_id = "get_audit_consistency_proof"
    )]
    async fn consistency(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        from: Query<u64>,
        to: Query<Option<u64>>,
    ) -> Result<Json<ConsistencyProofBody>, ApiError> {
        let head = state.store().tree_size();
        let to = Self::size_or_latest(&state, to.0).await?;
        check_size("to", to, head)?;
        if from.0 == 0 || from.0 > to {
            return Err(ApiError::field(
                "from",
                format!("from must be between 1 and to ({to})"),
            ));
        }
        let store = state.store().clone();
        let p = tokio::task::spawn_blocking(move || store.consistency_proof(from.0, to))
            .await
            .map_err(ApiError::internal)??;
        Ok(Json(ConsistencyProofBody {
            from: p.from,
            to: p.to,
            from_root: hex(&p.from_root),
            to_root: hex(&p.to_root),
            path: p.path.iter().map(hex).collect(),
        }))
    }

    /// Users (role, permissions, disabled), API keys (owner, permissions, expiry,
    /// revoked) and models as they were after event `at` (a seq) or at time `at`
    /// (RFC 3339). Requires permission `view_audit_logs`.
    #[oai(
        path = "/api/v1/audit/state",
        method = "get",
        operation_id = "get_audit_state"
    )]
    async fn state(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ViewAuditLogs>,
        /// An event seq, or an RFC 3339 time.
        at: Query<String>,
    ) -> Result<Json<StateAt>, ApiError> {
        let at: At = at.0.parse().map_err(|e: String| ApiError::field("at", e))?;
        let store = state.store().clone();
        let s = tokio::task::spawn_blocking(move || state_at(store.range(0), at, |_| {}))
            .await
            .map_err(ApiError::internal)??;
        Ok(Json(s))
    }
}
