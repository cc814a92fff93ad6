//! Encodings of flow records and audit events (placeholder: `calico` only; the full set lands
//! with the encodings change).

use crate::model::FlowRecord;

/// How records are written for a sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The flow-log JSON.
    #[default]
    Calico,
    /// Elastic Common Schema.
    Ecs,
    /// OCSF.
    Ocsf,
    /// ArcSight CEF.
    Cef,
}

/// What every encoding may need besides the record.
pub struct EncodeContext {
    /// This node's name.
    pub node: String,
    /// The agent's version.
    pub agent_version: &'static str,
}

/// A record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON serialization failed.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Appends one encoded flow record to `out`, without a trailing newline.
pub fn encode_flow(
    rec: &FlowRecord,
    _enc: Encoding,
    _ctx: &EncodeContext,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    serde_json::to_writer(out, rec)?;
    Ok(())
}

/// Appends one encoded audit event to `out`, without a newline.
pub fn encode_audit(
    event: &serde_json::Value,
    _enc: Encoding,
    _ctx: &EncodeContext,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    serde_json::to_writer(out, event)?;
    Ok(())
}
