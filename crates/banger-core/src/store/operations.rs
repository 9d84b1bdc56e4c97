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
            Ok(
                c.query_row(&format!("{SELECT} WHERE id = ?1"), [id], read_row)
                    .optional()?,
            )
        })?;
        row.map(decode).transpose()
    }

    /// The `limit` operations begun last, newest first.
    pub fn recent_operations(&self, limit: usize) -> Result<Vec<Operation>, StoreError> {
        let rows = self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{SELECT} ORDER BY started_at DESC, rowid DESC LIMIT ?1"
            ))?;
            let rows = stmt
                .query_map([limit as i64], read_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(decode).collect()
    }
}

const SELECT: &str =
    "SELECT id, kind, target, state, stages, error, started_at, duration_ms FROM operations";

type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<u64>,
);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn decode(row: Row) -> Result<Operation, StoreError> {
    let (id, kind, target, state, stages, error, started_at, duration_ms) = row;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("operation {id}: {e}"));
    Ok(Operation {
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
    })
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

    #[test]
    fn recent_operations_come_newest_first_and_bounded() {
        let s = Store::open_in_memory().unwrap();
        for (id, started_at) in [("a", 5), ("b", 7), ("c", 7), ("d", 1)] {
            let op = Operation {
                id: id.into(),
                kind: OperationKind::Start,
                target: "vm".into(),
                state: OperationState::Succeeded,
                stages: vec![],
                error: None,
                started_at,
                duration_ms: Some(1),
            };
            s.save_operation(&op).unwrap();
        }
        let ids = |n| {
            s.recent_operations(n)
                .unwrap()
                .into_iter()
                .map(|o| o.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(3), ["c", "b", "a"], "same second: the later row first");
        assert_eq!(ids(10), ["c", "b", "a", "d"]);
    }
}
