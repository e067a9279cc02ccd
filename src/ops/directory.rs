//! The cluster's session directory: every node's live sessions, in Redis, so an operator on any
//! node sees all of them and per-user limits count them all.

use std::sync::Arc;
use std::time::Duration;

use crate::identity::redis::{key, Redis};
use crate::identity::store::StoreError;

/// The set of node ids.
const NODES: &str = "hermes:nodes";

/// This node's id: `[state] node_id`, else the host name and the process id (unique among
/// nodes on one host, and across restarts, whose old entry then just expires).
pub fn node_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Every node's live sessions, each node's list under `hermes:node:<id>` with a short expiry
/// refreshed by a heartbeat, so a node that dies drops out by itself.
pub struct SessionDirectory {
    redis: Arc<Redis>,
    node: String,
}

/// How long a node's list lives without a heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(15);

impl SessionDirectory {
    /// The directory as node `node`.
    pub fn new(redis: Arc<Redis>, node: String) -> SessionDirectory {
        SessionDirectory { redis, node }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Publishes this node's sessions (a JSON array).
    pub async fn publish(&self, sessions_json: String) -> Result<(), StoreError> {
        self.redis
            .query::<()>(
                redis::cmd("SET")
                    .arg(key("node", &self.node))
                    .arg(sessions_json)
                    .arg("PX")
                    .arg(NODE_TTL.as_millis() as u64),
            )
            .await?;
        self.redis
            .query::<()>(redis::cmd("SADD").arg(NODES.to_owned()).arg(&self.node))
            .await
    }

    /// Every node's sessions, as (node, session JSON) pairs.
    pub async fn all(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let nodes: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(NODES.to_owned()))
            .await?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| key("node", n)).collect();
        let values: Vec<Option<String>> = self.redis.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut out = Vec::new();
        for (node, v) in nodes.into_iter().zip(values) {
            match v.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) {
                Some(serde_json::Value::Array(list)) => {
                    out.extend(list.into_iter().map(|s| (node.clone(), s)));
                }
                // The node's heartbeat expired: it is gone.
                _ => {
                    let _ = self
                        .redis
                        .query::<()>(redis::cmd("SREM").arg(NODES.to_owned()).arg(&node))
                        .await;
                }
            }
        }
        Ok(out)
    }
}
