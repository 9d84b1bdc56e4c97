//! Operation rows: the record of every create/start/stop/delete/build, with
//! its stages and outcome, written when the operation ends.

use super::{Store, StoreError};
use banger_api::Operation;
use rusqlite::{OptionalExtension, params};

impl Store {
    /// Inserts or replaces an operation's record.
    pub fn save_operation(&self, op: &Operation) -> Result<(), StoreError> {
        let kind = serde_json::to_value(op.kind).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let state =
            serde_json::to_value(op.state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let stages =
            serde_json::to_string(&op.stages).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let error = op
            .error
            .as_ref()
            .map(|e| serde_json::to_string(e).expect("error serializes"));
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO operations (id, kind, target, state, stages, error, started_at, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![op.id, kind.as_str(), op.target, state.as_str(), stages, error, op.started_at, op.duration_ms],
            )?;
            Ok(())
        })
    }

    pub fn operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        let row = self.read(|c| {
            Ok(c.query_row(
                "SELECT id, kind, target, state, stages, error, started_at, duration_ms FROM operations WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<u64>>(7)?,
                    ))
                },
            )
            .optional()?)
        })?;
        let Some((id, kind, target, state, stages, error, started_at, duration_ms)) = row else {
            return Ok(None);
        };
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("operation {id}: {e}"));
        Ok(Some(Operation {
            kind: serde_json::from_value(serde_json::Value::String(kind)).map_err(corrupt)?,
            state: serde_json::from_value(serde_json::Value::String(state)).map_err(corrupt)?,
            stages: serde_json::from_str(&stages).map_err(corrupt)?,
            error: error
                .map(|e| serde_json::from_str(&e))
                .transpose()
                .map_err(corrupt)?,
            target,
            started_at,
            duration_ms,
            id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::{ApiError, OperationKind, OperationState, Stage};

    #[test]
    fn operations_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let op = Operation {
            id: "op1".into(),
            kind: OperationKind::Create,
            target: "web".into(),
            state: OperationState::Failed,
            stages: vec![Stage {
                name: "boot".into(),
                label: "boot".into(),
                state: OperationState::Failed,
                duration_ms: Some(3),
                detail: None,
            }],
            error: Some(ApiError {
                code: banger_api::ErrorCode::Engine,
                message: "no".into(),
            }),
            started_at: 9,
            duration_ms: Some(4),
        };
        s.save_operation(&op).unwrap();
        assert_eq!(s.operation("op1").unwrap(), Some(op));
        assert_eq!(s.operation("nope").unwrap(), None);
    }
}
