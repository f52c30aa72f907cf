//! CSV files of a simulation. Every file has a header; times are unix milliseconds; ids are
//! `u{n}` (users), `g{n}` (goals) and `s{seed}-{n}` (events); rows are in a fixed order (events
//! by time, the rest by id), so equal simulations give equal bytes.
//!
//! | file | columns |
//! |---|---|
//! | `events.csv` | `event_id,user_id,item_id,kind,value,ts` (item empty for `app_open`, value only for `rate`) |
//! | `items.csv` | `item_id,title,description,tags,type,difficulty` (tags `|`-separated) |
//! | `users.csv` | `user_id,signup_ms,motivation,consistency` (latent traits: ground truth, not features) |
//! | `goal_outcomes.csv` | `user_id,goal_id,started_ms,completed,outcome,resolved_ms` per adopted goal |
//! | `churn.csv` | `user_id,churned,churn_ms` per user (`churn_ms` empty if not churned) |

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{item_id, Simulation};
use crate::error::LoadError;

pub const EVENTS: &str = "events.csv";
pub const ITEMS: &str = "items.csv";
pub const USERS: &str = "users.csv";
pub const GOAL_OUTCOMES: &str = "goal_outcomes.csv";
pub const CHURN: &str = "churn.csv";

type Writer = fn(&Simulation, &mut dyn Write) -> io::Result<()>;

/// Every file: its name and how to write it.
const FILES: [(&str, Writer); 5] = [
    (EVENTS, write_events),
    (ITEMS, write_items),
    (USERS, write_users),
    (GOAL_OUTCOMES, write_goal_outcomes),
    (CHURN, write_churn),
];

/// Writes every file into `dir` (created if missing); returns their paths.
pub fn write_all(sim: &Simulation, dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let failed = |path: &Path, source: io::Error| LoadError::WriteReport {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    let mut paths = Vec::with_capacity(FILES.len());
    for (name, write) in FILES {
        let path = dir.join(name);
        let result = File::create(&path).and_then(|file| {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            write(sim, &mut out)?;
            out.flush()
        });
        result.map_err(|e| failed(&path, e))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Every file in memory, `(name, bytes)` (tests and small simulations).
pub fn render_all(sim: &Simulation) -> Vec<(&'static str, Vec<u8>)> {
    FILES
        .iter()
        .map(|&(name, write)| {
            let mut bytes = Vec::new();
            // Writing into a Vec cannot fail.
            let _ = write(sim, &mut bytes);
            (name, bytes)
        })
        .collect()
}

fn write_events(sim: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "event_id,user_id,item_id,kind,value,ts")?;
    let seed = sim.config.seed;
    for (i, e) in sim.events.iter().enumerate() {
        write!(out, "s{seed}-{i},u{},", e.user)?;
        if let Some(item) = e.item {
            write!(out, "g{item}")?;
        }
        write!(out, ",{},", e.kind.as_str())?;
        if let Some(value) = e.value {
            write!(out, "{value}")?;
        }
        writeln!(out, ",{}", e.ts_ms)?;
    }
    Ok(())
}

fn write_items(sim: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record([
        "item_id",
        "title",
        "description",
        "tags",
        "type",
        "difficulty",
    ])?;
    for g in &sim.catalogue.goals {
        csv.write_record([
            item_id(g.id).as_str(),
            &g.title,
            &g.description,
            &g.tags.join("|"),
            g.goal_type.as_str(),
            &format!("{:.2}", g.difficulty),
        ])?;
    }
    csv.flush()
}

fn write_users(sim: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "user_id,signup_ms,motivation,consistency")?;
    for u in &sim.users {
        writeln!(
            out,
            "u{},{},{:.4},{:.4}",
            u.id, u.signup_ms, u.motivation, u.consistency
        )?;
    }
    Ok(())
}

fn write_goal_outcomes(sim: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "user_id,goal_id,started_ms,completed,outcome,resolved_ms"
    )?;
    for g in &sim.goals {
        write!(
            out,
            "u{},g{},{},{},{},",
            g.user,
            g.goal,
            g.started_ms,
            g.outcome == super::Outcome::Completed,
            g.outcome.as_str()
        )?;
        if let Some(ts) = g.resolved_ms {
            write!(out, "{ts}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn write_churn(sim: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "user_id,churned,churn_ms")?;
    for c in &sim.churn {
        write!(out, "u{},{},", c.user, c.churned)?;
        if let Some(ts) = c.churn_ms {
            write!(out, "{ts}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{simulate, SimConfig, DEFAULT_START_MS};
    use super::*;

    #[test]
    fn files_have_headers_and_consistent_rows() {
        let sim = simulate(&SimConfig {
            users: 50,
            days: 20,
            seed: 3,
            start_ms: DEFAULT_START_MS,
        });
        let files = render_all(&sim);
        let text = |name: &str| {
            let bytes = &files.iter().find(|(n, _)| *n == name).unwrap().1;
            String::from_utf8(bytes.clone()).unwrap()
        };
        let events = text(EVENTS);
        let mut lines = events.lines();
        assert_eq!(lines.next(), Some("event_id,user_id,item_id,kind,value,ts"));
        assert_eq!(lines.count(), sim.events.len());
        let first = events.lines().nth(1).unwrap();
        assert!(first.starts_with("s3-0,u"), "{first}");
        assert!(events.lines().skip(1).all(|l| l.split(',').count() == 6));
        assert!(events
            .lines()
            .filter(|l| l.contains(",app_open,"))
            .all(|l| l.split(',').nth(2) == Some("")));

        let items_text = text(ITEMS);
        let mut items = csv::Reader::from_reader(items_text.as_bytes());
        let rows: Vec<csv::StringRecord> = items.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), sim.catalogue.goals.len());
        assert_eq!(&rows[0][0], "g0");
        assert!(rows[0][3].contains('|'));
        assert_eq!(text(USERS).lines().count(), 51);
        assert_eq!(text(CHURN).lines().count(), 51);
        assert_eq!(text(GOAL_OUTCOMES).lines().count(), sim.goals.len() + 1);
    }
}
