//! Workload data: reading a MovieLens-style ratings CSV (`user_id,item_id,rating,timestamp`,
//! timestamps in unix seconds) and turning it into what the scenarios send. Everything here runs
//! before the timed part of a run, so the hot loop only copies pre-serialised bytes: `ingest`
//! gets its `POST /v1/events` bodies fully encoded, `recommend` gets its distinct user ids.
//!
//! Columns are read by position, so both the `user_id,...` header of the shared data and the
//! `userId,movieId,...` header of the upstream MovieLens files work; a file without a header is
//! recognised by a numeric fourth column in its first line.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::error::LoadError;

/// Most events the server accepts in one `POST /v1/events`.
pub const MAX_BATCH: usize = 10_000;

/// One row of a ratings file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    /// 0-based index of the data row in the file (header excluded); the stable part of the
    /// event id, so it does not change when rows are re-ordered by time.
    pub row: usize,
    pub user_id: String,
    pub item_id: String,
    pub rating: f64,
    /// Unix seconds, as in MovieLens.
    pub timestamp_s: i64,
}

/// One `rate` event exactly as `POST /v1/events` expects it.
#[derive(Debug, Serialize, PartialEq)]
pub struct RateEvent<'a> {
    pub event_id: String,
    pub user_id: &'a str,
    pub item_id: &'a str,
    pub kind: &'static str,
    pub value: f64,
    /// Unix milliseconds.
    pub ts: i64,
}

/// A serialised `POST /v1/events` body and how many events it carries.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub events: usize,
    pub body: Vec<u8>,
}

/// Reads every rating of the CSV file at `path`, in file order.
pub fn read_ratings(path: &Path) -> Result<Vec<Rating>, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::ReadData {
        path: path.to_path_buf(),
        source: source.into(),
    })?;
    parse_ratings(io::BufReader::new(file), path)
}

/// Parses ratings CSV from `reader`; `path` only names the source in errors.
pub fn parse_ratings<R: io::Read>(reader: R, path: &Path) -> Result<Vec<Rating>, LoadError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(reader);
    let mut ratings = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = csv
            .read_record(&mut record)
            .map_err(|source| LoadError::ReadData {
                path: path.to_path_buf(),
                source,
            })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, csv::Position::line);
        if std::mem::take(&mut first) && is_header(&record) {
            continue;
        }
        if record.iter().all(str::is_empty) {
            continue;
        }
        let rating =
            parse_row(&record, ratings.len()).map_err(|message| LoadError::InvalidRow {
                path: path.to_path_buf(),
                line,
                message,
            })?;
        ratings.push(rating);
    }
    if ratings.is_empty() {
        return Err(LoadError::EmptyData {
            path: path.to_path_buf(),
        });
    }
    Ok(ratings)
}

/// A first line whose timestamp column is not an integer is a header.
fn is_header(record: &csv::StringRecord) -> bool {
    record.get(3).is_none_or(|ts| ts.parse::<i64>().is_err())
}

fn parse_row(record: &csv::StringRecord, row: usize) -> Result<Rating, String> {
    if record.len() < 4 {
        return Err(format!(
            "expected 4 columns user_id,item_id,rating,timestamp, found {}",
            record.len()
        ));
    }
    let field = |i: usize, name: &str| -> Result<&str, String> {
        match record.get(i) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(format!("empty {name}")),
        }
    };
    let user_id = field(0, "user_id")?;
    let item_id = field(1, "item_id")?;
    let rating_text = field(2, "rating")?;
    let rating = rating_text
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite())
        .ok_or_else(|| format!("rating {rating_text:?} is not a number"))?;
    let ts_text = field(3, "timestamp")?;
    let timestamp_s = ts_text
        .parse::<i64>()
        .map_err(|_| format!("timestamp {ts_text:?} is not unix seconds"))?;
    Ok(Rating {
        row,
        user_id: user_id.to_owned(),
        item_id: item_id.to_owned(),
        rating,
        timestamp_s,
    })
}

/// Orders ratings by time; rows with equal timestamps keep their file order, so the sequence
/// (and therefore every batch) is the same on every run.
pub fn sort_by_time(ratings: &mut [Rating]) {
    ratings.sort_by_key(|r| r.timestamp_s);
}

/// Milliseconds to add to every timestamp so that the newest rating lands on `now_ms`; lets a
/// 1998 data set look like last week's activity to time-windowed server logic.
pub fn shift_to_now_ms(ratings: &[Rating], now_ms: i64) -> i64 {
    ratings
        .iter()
        .map(|r| r.timestamp_s.saturating_mul(1000))
        .max()
        .map_or(0, |newest| now_ms.saturating_sub(newest))
}

/// The `rate` event for one rating: `event_id` is `{prefix}-{row}`, `ts` is milliseconds
/// (seconds × 1000, plus `shift_ms`).
pub fn to_event<'a>(rating: &'a Rating, prefix: &str, shift_ms: i64) -> RateEvent<'a> {
    RateEvent {
        event_id: format!("{prefix}-{}", rating.row),
        user_id: &rating.user_id,
        item_id: &rating.item_id,
        kind: "rate",
        value: rating.rating,
        ts: rating
            .timestamp_s
            .saturating_mul(1000)
            .saturating_add(shift_ms),
    }
}

/// Serialises `ratings` (already in send order) into request bodies of at most `batch` events.
pub fn encode_batches(
    ratings: &[Rating],
    batch: usize,
    prefix: &str,
    shift_ms: i64,
) -> Result<Vec<EncodedBatch>, LoadError> {
    debug_assert!(
        (1..=MAX_BATCH).contains(&batch),
        "batch size validated by the CLI"
    );
    ratings
        .chunks(batch.max(1))
        .map(|chunk| {
            let events: Vec<RateEvent<'_>> = chunk
                .iter()
                .map(|r| to_event(r, prefix, shift_ms))
                .collect();
            let body = serde_json::to_vec(&events).map_err(|source| LoadError::Serialize {
                what: "event batch",
                source,
            })?;
            Ok(EncodedBatch {
                events: chunk.len(),
                body,
            })
        })
        .collect()
}

/// Distinct user ids in order of first appearance.
pub fn distinct_users(ratings: &[Rating]) -> Vec<String> {
    let mut seen = HashSet::new();
    ratings
        .iter()
        .filter(|r| seen.insert(r.user_id.as_str()))
        .map(|r| r.user_id.clone())
        .collect()
}

/// Distinct item ids in order of first appearance.
pub fn distinct_items(ratings: &[Rating]) -> Vec<String> {
    let mut seen = HashSet::new();
    ratings
        .iter()
        .filter(|r| seen.insert(r.item_id.as_str()))
        .map(|r| r.item_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Rating>, LoadError> {
        parse_ratings(text.as_bytes(), Path::new("test.csv"))
    }

    #[test]
    fn parses_movielens_rows_with_either_header() {
        for header in [
            "user_id,item_id,rating,timestamp",
            "userId,movieId,rating,timestamp",
        ] {
            let text = format!("{header}\n196,242,3,881250949\n186,302,3.5,891717742\n");
            let ratings = parse(&text).unwrap();
            assert_eq!(ratings.len(), 2);
            assert_eq!(
                ratings[1],
                Rating {
                    row: 1,
                    user_id: "186".into(),
                    item_id: "302".into(),
                    rating: 3.5,
                    timestamp_s: 891_717_742,
                }
            );
        }
    }

    #[test]
    fn headerless_file_keeps_its_first_row() {
        let ratings = parse("1,10,4,100\n2,20,5,200\n").unwrap();
        assert_eq!(ratings.len(), 2);
        assert_eq!(ratings[0].user_id, "1");
        assert_eq!(ratings[0].row, 0);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let err = parse("user_id,item_id,rating,timestamp\n1,10,4,100\n1,10,x,100\n").unwrap_err();
        match err {
            LoadError::InvalidRow { line, message, .. } => {
                assert_eq!(line, 3);
                assert!(message.contains("rating"), "{message}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(matches!(
            parse("user_id,item_id,rating,timestamp\n1,10,4\n"),
            Err(LoadError::InvalidRow { .. })
        ));
        assert!(matches!(
            parse("user_id,item_id,rating,timestamp\n"),
            Err(LoadError::EmptyData { .. })
        ));
    }

    #[test]
    fn sort_is_by_time_and_stable() {
        let mut ratings = parse("u,i,r,t\na,1,1,300\nb,2,2,100\nc,3,3,300\nd,4,4,100\n").unwrap();
        sort_by_time(&mut ratings);
        let users: Vec<&str> = ratings.iter().map(|r| r.user_id.as_str()).collect();
        assert_eq!(users, ["b", "d", "a", "c"]);
    }

    #[test]
    fn event_has_deterministic_id_and_millisecond_ts() {
        let ratings = parse("u,i,r,t\n9,5,1,0\n196,242,3,881250949\n").unwrap();
        let event = to_event(&ratings[1], "ml", 0);
        assert_eq!(event.event_id, "ml-1");
        assert_eq!(event.ts, 881_250_949_000);
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event_id":"ml-1","user_id":"196","item_id":"242","kind":"rate","value":3.0,"ts":881250949000}"#
        );
        assert_eq!(to_event(&ratings[1], "run2", 5).ts, 881_250_949_005);
    }

    #[test]
    fn batches_split_evenly_and_round_trip() {
        let text: String = std::iter::once("u,i,r,t\n".to_owned())
            .chain((0..25).map(|k| format!("{},{},4,{}\n", k % 3, k, 1000 + k)))
            .collect();
        let ratings = parse(&text).unwrap();
        let batches = encode_batches(&ratings, 10, "ml", 0).unwrap();
        let sizes: Vec<usize> = batches.iter().map(|b| b.events).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let decoded: Vec<serde_json::Value> = serde_json::from_slice(&batches[2].body).unwrap();
        assert_eq!(decoded.len(), 5);
        assert_eq!(decoded[0]["event_id"], "ml-20");
        assert_eq!(decoded[0]["kind"], "rate");
        assert_eq!(decoded[4]["ts"], 1_024_000);
    }

    #[test]
    fn shift_moves_newest_rating_to_now() {
        let ratings = parse("u,i,r,t\n1,1,1,100\n1,2,1,250\n").unwrap();
        let shift = shift_to_now_ms(&ratings, 1_000_000);
        assert_eq!(shift, 750_000);
        assert_eq!(to_event(&ratings[1], "ml", shift).ts, 1_000_000);
    }

    #[test]
    fn distinct_users_in_first_seen_order() {
        let ratings = parse("u,i,r,t\n7,1,1,1\n3,1,1,1\n7,2,1,1\n5,1,1,1\n").unwrap();
        assert_eq!(distinct_users(&ratings), ["7", "3", "5"]);
        assert_eq!(distinct_items(&ratings), ["1", "2"]);
    }
}
