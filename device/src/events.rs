//! Reading one user's activity log from an events CSV as `momentum-load simulate` writes it:
//! `event_id,user_id,item_id,kind,value,ts` with `ts` in unix milliseconds (an RFC 3339 time is
//! not accepted here) and an empty `item_id` for `app_open`. Item ids are interned to dense goal
//! ids in order of first appearance, as the server interns them; features only depend on goal
//! identity, not on the numbers.

use std::collections::HashMap;
use std::io::Read;

use momentum_models::events::EventKind;
use momentum_models::features::Activity;

use crate::DeviceError;

/// A user's log and the goal ids it uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserLog {
    /// Sorted by time.
    pub log: Vec<Activity>,
    /// Item id → dense goal id.
    pub goals: HashMap<String, u32>,
    /// Rows of other users skipped.
    pub other_rows: usize,
    /// Latest `ts` of any row of the file, whoever's (the end of a simulation).
    pub latest_ts_ms: Option<i64>,
}

impl UserLog {
    /// The dense id of `item_id`, if the user acted on it.
    pub fn goal(&self, item_id: &str) -> Option<u32> {
        self.goals.get(item_id).copied()
    }
}

/// Reads the events of `user_id` from `reader`. A malformed row of that user is an error
/// naming its line; other users' rows are only counted.
pub fn read_user_log(reader: impl Read, user_id: &str) -> Result<UserLog, DeviceError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let headers = csv
        .headers()
        .map_err(|e| DeviceError::Csv {
            reason: e.to_string(),
        })?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| DeviceError::Csv {
                reason: format!("missing column {name:?}"),
            })
    };
    let (user_col, item_col, kind_col, ts_col) = (
        column("user_id")?,
        column("item_id")?,
        column("kind")?,
        column("ts")?,
    );
    let mut out = UserLog::default();
    for (i, record) in csv.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| DeviceError::Csv {
            reason: format!("line {line}: {e}"),
        })?;
        let field = |c: usize| record.get(c).unwrap_or("").trim();
        if let Ok(ts) = field(ts_col).parse::<i64>() {
            out.latest_ts_ms = Some(out.latest_ts_ms.map_or(ts, |t| t.max(ts)));
        }
        if field(user_col) != user_id {
            out.other_rows += 1;
            continue;
        }
        let kind = EventKind::parse(field(kind_col)).ok_or_else(|| DeviceError::Csv {
            reason: format!("line {line}: unknown kind {:?}", field(kind_col)),
        })?;
        let ts_ms: i64 = field(ts_col).parse().map_err(|_| DeviceError::Csv {
            reason: format!(
                "line {line}: ts {:?} is not unix milliseconds",
                field(ts_col)
            ),
        })?;
        let item = field(item_col);
        let goal = if item.is_empty() {
            None
        } else {
            let next = out.goals.len() as u32;
            Some(*out.goals.entry(item.to_string()).or_insert(next))
        };
        out.log.push(Activity::new(ts_ms, kind, goal));
    }
    out.log.sort_by_key(|a| a.ts_ms);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_users_events_and_interns_goals() {
        let csv = "event_id,user_id,item_id,kind,value,ts\n\
                   e1,u1,g7,start,,2000\n\
                   e2,u2,g7,start,,1500\n\
                   e3,u1,,app_open,,1000\n\
                   e4,u1,g9,rate,4,3000\n\
                   e5,u1,g7,checkin,,2500\n";
        let log = read_user_log(csv.as_bytes(), "u1").unwrap();
        assert_eq!(log.other_rows, 1);
        assert_eq!(log.latest_ts_ms, Some(3000));
        let ts: Vec<i64> = log.log.iter().map(|a| a.ts_ms).collect();
        assert_eq!(ts, [1000, 2000, 2500, 3000]);
        assert_eq!(log.goal("g7"), Some(0));
        assert_eq!(log.goal("g9"), Some(1));
        assert_eq!(log.log[0].goal, None);
        assert_eq!(log.log[2].kind, EventKind::Checkin);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let csv = "event_id,user_id,item_id,kind,value,ts\ne1,u1,g1,jump,,1\n";
        let err = read_user_log(csv.as_bytes(), "u1").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let csv = "event_id,user_id,item_id,kind,value,ts\ne1,u1,g1,view,,yesterday\n";
        assert!(read_user_log(csv.as_bytes(), "u1").is_err());
        assert!(read_user_log("a,b\n1,2\n".as_bytes(), "u1").is_err());
    }
}
