//! The user rows a `UserShard` owns, packed: a shard holds every user it has ever seen, so
//! the per-user cost decides how many users fit in memory.
//!
//! A user costs a slot in [`Rows`] (an id → slot map entry of 8 bytes and a 64-byte
//! [`UserRow`] in one dense array), 16 bytes per item they touched (cells sorted by item) and
//! 12 bytes per event of their activity log. A row's first cell and first logged event are
//! kept in the row itself, so a user with one event allocates nothing more; past that, the
//! vectors grow by half, not by doubling from four as `Vec` does, since most users touch a
//! handful of items, and a user with several events in one batch (a bulk load) has them
//! fitted to their length afterwards if they are short ([`UserRow::fit`]).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::index::UserProfile;
use momentum_models::events::{EventKind, Interaction, KindWeights};
use momentum_models::features::Activity;

/// Makes room for one more element, growing by half.
fn reserve_one<T, const N: usize>(v: &mut SmallVec<[T; N]>) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len() / 2 + 1);
    }
}

/// Longest cells or log [`UserRow::fit`] fits: longer ones belong to the few heavy users, whose
/// spare room costs little in all and whose growth must stay amortised.
const FIT_MAX: usize = 64;

/// Moves `v` into an allocation of exactly its length if it has spare room and is at most
/// [`FIT_MAX`] long. A new allocation and a copy, not `shrink_to_fit`: the allocator keeps a
/// block that shrinks by less than half where it is, room and all.
fn fit<T: Copy, const N: usize>(v: &mut SmallVec<[T; N]>) {
    if v.spilled() && v.capacity() > v.len() && v.len() <= FIT_MAX {
        *v = SmallVec::from_slice(v);
    }
}

/// `ts_ms` as whole seconds and the milliseconds past them, if it falls between 1970 and
/// 2106 (the seconds fit 32 bits).
fn split_ms(ts_ms: i64) -> Option<(u32, u32)> {
    let secs = u32::try_from(ts_ms.div_euclid(1000)).ok()?;
    Some((secs, ts_ms.rem_euclid(1000) as u32))
}

/// The inverse of [`split_ms`]; `packed` holds the milliseconds in its low 10 bits.
fn join_ms(secs: u32, packed: u32) -> i64 {
    i64::from(secs) * 1000 + i64::from(packed & 0x3ff)
}

/// Bits 20–31 of [`Cell::packed`] when the cell's interaction is kept whole in the row's
/// [`UserRow::rare`] list.
const WIDE: u32 = 0xfff;

/// What a user did with one item: an [`Interaction`] and its item in 16 bytes. The latest
/// event's time is split into whole seconds and the milliseconds past them, and the rating is
/// kept in hundredths; an interaction that does not survive that packing bit for bit (a time
/// before 1970 or after 2106, a rating of finer grain or above 40.93, an unknown kind bit) is
/// kept whole in the row's `rare` part, and its cell only marks the place.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cell {
    item: u32,
    implicit: f32,
    /// `last_ts` in whole seconds (rounded down).
    secs: u32,
    /// Bits 0–9: the milliseconds past `secs`; 10–19: the kinds seen; 20–31: the rating in
    /// hundredths plus one (0: no rating), or [`WIDE`].
    packed: u32,
}

impl Cell {
    /// The packed form of `c`, if it unpacks to `c` exactly.
    fn pack(item: u32, c: &Interaction) -> Option<Cell> {
        let (secs, ms) = split_ms(c.last_ts)?;
        let kinds = u32::from(c.kinds);
        if kinds >= 1 << 10 {
            return None;
        }
        let rating = match c.rating {
            None => 0,
            Some(r) => {
                let hundredths = (r * 100.0).round();
                if !(0.0..(WIDE - 1) as f32).contains(&hundredths) {
                    return None;
                }
                // Compared as bits, so -0.0 (which would come back as 0.0) stays wide.
                let code = hundredths as u32;
                if (code as f32 / 100.0).to_bits() != r.to_bits() {
                    return None;
                }
                code + 1
            }
        };
        Some(Cell {
            item,
            implicit: c.implicit,
            secs,
            packed: ms | kinds << 10 | rating << 20,
        })
    }

    /// A cell whose interaction is in the row's `rare` part.
    fn wide(item: u32) -> Cell {
        Cell {
            item,
            implicit: 0.0,
            secs: 0,
            packed: WIDE << 20,
        }
    }

    fn is_wide(&self) -> bool {
        self.packed >> 20 == WIDE
    }

    /// The interaction of a cell that is not wide.
    fn unpack(&self) -> Interaction {
        let rating = self.packed >> 20;
        Interaction {
            implicit: self.implicit,
            rating: (rating > 0).then(|| (rating - 1) as f32 / 100.0),
            kinds: ((self.packed >> 10) & 0x3ff) as u16,
            last_ts: join_ms(self.secs, self.packed),
        }
    }
}

/// What few rows have: the profile, and what does not pack. Boxed in the row, so the row
/// pays one pointer for it, and a row with none of them nothing more; a profiled user pays
/// 8 bytes more than the profile.
#[derive(Debug, Default)]
struct Rare {
    profile: Option<UserProfile>,
    wide: Option<Box<Wide>>,
}

/// What of a row does not pack: the interactions of such cells, by item, and the whole
/// activity log once it holds an event whose time does not.
#[derive(Debug, Default)]
struct Wide {
    cells: Vec<(u32, Interaction)>,
    log: Option<SmallVec<[Activity; 0]>>,
}

/// One event of an activity log: an [`Activity`] in 12 bytes, its time split like a cell's.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Logged {
    /// `ts_ms` in whole seconds (rounded down).
    secs: u32,
    /// `u32::MAX`: none.
    goal: u32,
    /// Bits 0–9: the milliseconds past `secs`; 10–13: the index in `EventKind::ALL`.
    packed: u32,
}

impl Logged {
    /// The packed form of `a`, if its time is between 1970 and 2106.
    fn pack(a: Activity) -> Option<Logged> {
        let (secs, ms) = split_ms(a.ts_ms)?;
        Some(Logged {
            secs,
            goal: a.goal.unwrap_or(u32::MAX),
            packed: ms | (a.kind as u32) << 10,
        })
    }

    fn activity(&self) -> Activity {
        Activity {
            ts_ms: self.ts_ms(),
            kind: EventKind::ALL[(self.packed >> 10) as usize],
            goal: (self.goal != u32::MAX).then_some(self.goal),
        }
    }
}

/// An entry of an activity log, packed or whole.
trait Timed: Copy {
    fn ts_ms(&self) -> i64;
}

impl Timed for Logged {
    fn ts_ms(&self) -> i64 {
        join_ms(self.secs, self.packed)
    }
}

impl Timed for Activity {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
}

/// Inserts `entry` in time order (events mostly arrive in order: a push at the back), then
/// trims the log to `max` entries and to `days` before the newest.
fn push_in_order<T: Timed, const N: usize>(
    log: &mut SmallVec<[T; N]>,
    entry: T,
    max: usize,
    days: u32,
) {
    let at = log.partition_point(|a| a.ts_ms() <= entry.ts_ms());
    reserve_one(log);
    log.insert(at, entry);
    let mut drop = log.len().saturating_sub(max);
    if let Some(newest) = log.last().map(Timed::ts_ms) {
        let horizon = newest.saturating_sub(momentum_models::clock::days_ms(days));
        drop = drop.max(log.partition_point(|a| a.ts_ms() < horizon));
    }
    log.drain(..drop);
}

/// One user's row: what they did with each item, their profile and their recent events.
#[derive(Debug)]
pub struct UserRow {
    /// Sorted by item.
    cells: SmallVec<[Cell; 1]>,
    /// Time order: at most `actors.activity_max_events`, none older than
    /// `actors.activity_days` before the newest (the features of the predictive models).
    activity: SmallVec<[Logged; 1]>,
    /// The profile, and what does not pack ([`Cell::pack`], [`Logged::pack`]): for events
    /// the API accepts, whose times fall between 1970 and a day ahead, only ratings finer
    /// than hundredths. While it holds the log, `activity` is empty.
    rare: Option<Box<Rare>>,
    /// `i64::MIN`: no event yet.
    last_event_ms: i64,
}

impl Default for UserRow {
    fn default() -> Self {
        UserRow {
            cells: SmallVec::new(),
            activity: SmallVec::new(),
            rare: None,
            last_event_ms: i64::MIN,
        }
    }
}

impl UserRow {
    /// What the user did with `item`.
    pub fn cell(&self, item: u32) -> Option<Interaction> {
        self.cells
            .binary_search_by_key(&item, |c| c.item)
            .ok()
            .map(|k| self.interaction(&self.cells[k]))
    }

    /// How many items the user has a cell on.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the user has no cell.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Every (item, interaction), by item.
    pub fn cells(&self) -> impl Iterator<Item = (u32, Interaction)> + '_ {
        self.cells.iter().map(|c| (c.item, self.interaction(c)))
    }

    fn interaction(&self, cell: &Cell) -> Interaction {
        if !cell.is_wide() {
            return cell.unpack();
        }
        let wide = self.wide().map_or(&[][..], |w| w.cells.as_slice());
        wide.binary_search_by_key(&cell.item, |w| w.0)
            .map(|k| wide[k].1.clone())
            .expect("a wide cell has its interaction in the rare part")
    }

    /// The position of `item`'s cell, inserted empty if there was none, and whether it was
    /// there.
    fn position(&mut self, item: u32) -> (usize, bool) {
        match self.cells.binary_search_by_key(&item, |c| c.item) {
            Ok(k) => (k, true),
            Err(k) => {
                reserve_one(&mut self.cells);
                let empty = Cell::pack(item, &Interaction::default()).expect("packs");
                self.cells.insert(k, empty);
                (k, false)
            }
        }
    }

    /// Stores `c` in the cell at `k`, packed or in the rare part.
    fn store(&mut self, k: usize, c: &Interaction) {
        let item = self.cells[k].item;
        let was_wide = self.cells[k].is_wide();
        match Cell::pack(item, c) {
            Some(cell) => {
                self.cells[k] = cell;
                if was_wide {
                    let wide = self.rare.as_mut().and_then(|r| r.wide.as_mut());
                    let wide = wide.expect("a wide cell has its interaction in the rare part");
                    wide.cells.retain(|w| w.0 != item);
                    self.tidy();
                }
            }
            None => {
                self.cells[k] = Cell::wide(item);
                let wide = &mut self.wide_mut().cells;
                match wide.binary_search_by_key(&item, |w| w.0) {
                    Ok(at) => wide[at].1 = c.clone(),
                    Err(at) => wide.insert(at, (item, c.clone())),
                }
            }
        }
    }

    /// Applies one event to the cell of `item`; returns its weight before and after.
    pub fn apply(
        &mut self,
        item: u32,
        kind: EventKind,
        value: Option<f32>,
        ts_ms: i64,
        weights: &KindWeights,
    ) -> (f32, f32) {
        let (k, _) = self.position(item);
        let mut cell = self.interaction(&self.cells[k]);
        let before = cell.weight(weights);
        cell.apply(kind, value, ts_ms, weights);
        self.store(k, &cell);
        (before, cell.weight(weights))
    }

    /// Replaces the cell of `item` (restoring a snapshot); returns the previous one.
    pub fn set_cell(&mut self, item: u32, cell: &Interaction) -> Option<Interaction> {
        let (k, existed) = self.position(item);
        let previous = existed.then(|| self.interaction(&self.cells[k]));
        self.store(k, cell);
        previous
    }

    /// Gives back the room grown ahead of need in cells and log of up to 64 entries. The shard
    /// calls it for a user with several events in one batch (a bulk load, mostly), whose row
    /// may not grow again for a while; a row that grows one event per batch keeps its room,
    /// and so do long rows, so growth stays amortised where it happens often.
    pub fn fit(&mut self) {
        fit(&mut self.cells);
        fit(&mut self.activity);
    }

    /// The profile (`PUT /v1/users/{id}`), if one was set.
    pub fn profile(&self) -> Option<&UserProfile> {
        self.rare.as_deref().and_then(|r| r.profile.as_ref())
    }

    pub fn set_profile(&mut self, profile: UserProfile) {
        self.rare.get_or_insert_with(Box::default).profile = Some(profile);
    }

    /// Unix milliseconds of the latest event.
    pub fn last_event_ms(&self) -> Option<i64> {
        (self.last_event_ms != i64::MIN).then_some(self.last_event_ms)
    }

    pub fn set_last_event_ms(&mut self, ms: Option<i64>) {
        self.last_event_ms = ms.unwrap_or(i64::MIN);
    }

    /// What does not pack, if anything.
    fn wide(&self) -> Option<&Wide> {
        self.rare.as_deref().and_then(|r| r.wide.as_deref())
    }

    /// What does not pack, created empty if needed.
    fn wide_mut(&mut self) -> &mut Wide {
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.wide.get_or_insert_with(Box::default)
    }

    /// Drops the parts of the rare part that hold nothing, and the rare part once it is empty.
    fn tidy(&mut self) {
        let Some(rare) = self.rare.as_mut() else {
            return;
        };
        if rare
            .wide
            .as_ref()
            .is_some_and(|w| w.cells.is_empty() && w.log.is_none())
        {
            rare.wide = None;
        }
        if rare.wide.is_none() && rare.profile.is_none() {
            self.rare = None;
        }
    }

    /// The log kept whole, if it is.
    fn wide_log(&self) -> Option<&[Activity]> {
        self.wide().and_then(|w| w.log.as_deref())
    }

    /// The activity log, in time order.
    pub fn activity(&self) -> impl Iterator<Item = Activity> + '_ {
        let wide = self.wide_log();
        let packed = if wide.is_some() {
            &[][..]
        } else {
            &self.activity[..]
        };
        let wide = wide.unwrap_or(&[]);
        wide.iter()
            .copied()
            .chain(packed.iter().map(Logged::activity))
    }

    /// Replaces the activity log (restoring a snapshot; already in time order).
    pub fn set_activity(&mut self, log: Vec<Activity>) {
        match log.iter().map(|&a| Logged::pack(a)).collect() {
            Some(packed) => {
                self.activity = packed;
                if let Some(wide) = self.rare.as_mut().and_then(|r| r.wide.as_mut()) {
                    wide.log = None;
                }
                self.tidy();
            }
            None => {
                self.activity = SmallVec::new();
                self.wide_mut().log = Some(log.into_iter().collect());
            }
        }
    }

    /// Records an event: its time as the latest, and in the activity log in time order
    /// (events mostly arrive in order: a push at the back), trimmed to `max` events and
    /// `days` before the newest.
    pub fn push_activity(&mut self, event: Activity, max: usize, days: u32) {
        self.last_event_ms = self.last_event_ms.max(event.ts_ms);
        if self.wide_log().is_none() {
            if let Some(packed) = Logged::pack(event) {
                push_in_order(&mut self.activity, packed, max, days);
                return;
            }
            // An event that does not pack: the log is kept whole from now on.
            let whole = self.activity.iter().map(Logged::activity).collect();
            self.activity = SmallVec::new();
            self.wide_mut().log = Some(whole);
        }
        let wide = self.rare.as_mut().and_then(|r| r.wide.as_mut());
        let log = wide.and_then(|w| w.log.as_mut());
        let log = log.expect("the log is kept whole");
        push_in_order(log, event, max, days);
        // Packed again once trimming has dropped every event that does not pack.
        if log.iter().all(|&a| Logged::pack(a).is_some()) {
            let whole = std::mem::take(log).into_vec();
            self.set_activity(whole);
        }
    }
}

/// A shard's rows: user → slot in one dense array, so a row costs no hash-table slack.
#[derive(Debug, Default)]
pub struct Rows {
    slots: FxHashMap<u32, u32>,
    users: Vec<u32>,
    rows: Vec<UserRow>,
}

impl Rows {
    pub fn get(&self, user: u32) -> Option<&UserRow> {
        self.slots.get(&user).map(|&s| &self.rows[s as usize])
    }

    /// The row of `user`, created empty if needed.
    pub fn get_or_insert(&mut self, user: u32) -> &mut UserRow {
        let next = self.rows.len() as u32;
        let slot = *self.slots.entry(user).or_insert(next);
        if slot == next {
            self.users.push(user);
            self.rows.push(UserRow::default());
        }
        &mut self.rows[slot as usize]
    }

    pub fn get_mut(&mut self, user: u32) -> Option<&mut UserRow> {
        self.slots.get(&user).map(|&s| &mut self.rows[s as usize])
    }

    pub fn remove(&mut self, user: u32) -> Option<UserRow> {
        let slot = self.slots.remove(&user)? as usize;
        let row = self.rows.swap_remove(slot);
        self.users.swap_remove(slot);
        if let Some(&moved) = self.users.get(slot) {
            self.slots.insert(moved, slot as u32);
        }
        Some(row)
    }

    /// Every (user, row), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &UserRow)> {
        self.users.iter().copied().zip(&self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_stays_ordered_and_bounded() {
        let mut row = UserRow::default();
        let day = momentum_models::clock::DAY_MS;
        let view = |ts_ms| Activity {
            ts_ms,
            kind: EventKind::View,
            goal: None,
        };
        for ts in [5 * day, 3 * day, 4 * day, 100 * day] {
            row.push_activity(view(ts), 3, 90);
        }
        let ts: Vec<i64> = row.activity().map(|a| a.ts_ms).collect();
        assert_eq!(
            ts,
            vec![100 * day],
            "older than 90 days before the newest are dropped"
        );
        for t in 0..10 {
            row.push_activity(view(100 * day + t), 3, 90);
        }
        let log: Vec<Activity> = row.activity().collect();
        assert_eq!(log.len(), 3);
        assert!(log
            .iter()
            .zip(log.iter().skip(1))
            .all(|(a, b)| a.ts_ms <= b.ts_ms));
        assert_eq!(row.last_event_ms(), Some(100 * day + 9));
    }

    #[test]
    fn cells_and_activity_round_trip_their_packing() {
        let mut row = UserRow::default();
        let weights = KindWeights::default();
        assert_eq!(
            row.apply(7, EventKind::Rate, Some(4.0), 10, &weights).0,
            0.0
        );
        row.apply(3, EventKind::View, None, 11, &weights);
        let mut want = Interaction::default();
        want.apply(EventKind::Rate, Some(4.0), 10, &weights);
        assert_eq!(row.cell(7), Some(want.clone()));
        assert_eq!(row.cells().map(|c| c.0).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(row.set_cell(7, &Interaction::default()), Some(want));
        for kind in EventKind::ALL {
            for ts_ms in [0, 999, 1_764_000_000_123, i64::from(u32::MAX) * 1000 + 999] {
                for goal in [Some(9), None] {
                    let a = Activity { ts_ms, kind, goal };
                    let packed = Logged::pack(a).expect("packs");
                    assert_eq!((packed.activity(), packed.ts_ms()), (a, ts_ms));
                }
            }
            for ts_ms in [-5, i64::from(u32::MAX) * 1000 + 1000] {
                let a = Activity {
                    ts_ms,
                    kind,
                    goal: None,
                };
                assert_eq!(Logged::pack(a), None);
            }
        }
    }

    #[test]
    fn cells_pack_exactly_or_are_kept_whole() {
        let at = |last_ts, rating, kinds| Interaction {
            implicit: 1.25,
            rating,
            kinds,
            last_ts,
        };
        let packed = [
            at(0, None, 0),
            at(1_764_000_000_123, Some(4.0), 0x3ff),
            at(999, Some(3.7), 1),
            at(i64::from(u32::MAX) * 1000 + 999, Some(40.93), 2),
            at(5, Some(0.0), 4),
        ];
        let wide = [
            at(-5, None, 0),
            at(i64::from(u32::MAX) * 1000 + 1000, None, 0),
            at(5, Some(-0.0), 0),
            at(5, Some(1.2345), 0),
            at(5, Some(40.94), 0),
            at(5, None, 0x400),
        ];
        for c in &packed {
            let cell = Cell::pack(9, c).expect("packs");
            assert!(!cell.is_wide());
            assert_eq!(cell.unpack(), *c);
            assert_eq!(
                cell.unpack().rating.map(f32::to_bits),
                c.rating.map(f32::to_bits)
            );
        }
        for c in &wide {
            assert_eq!(Cell::pack(9, c), None, "{c:?}");
        }
        // Through a row: wide cells read back whole, and leave the list when they pack again.
        let mut row = UserRow::default();
        for (k, c) in packed.iter().chain(&wide).enumerate() {
            assert_eq!(row.set_cell(k as u32 * 2, c), None);
        }
        for (k, c) in packed.iter().chain(&wide).enumerate() {
            let got = row.cell(k as u32 * 2).expect("stored");
            assert_eq!(got.rating.map(f32::to_bits), c.rating.map(f32::to_bits));
            assert_eq!(got, *c);
        }
        assert_eq!(row.wide().map(|w| w.cells.len()), Some(wide.len()));
        for k in packed.len()..packed.len() + wide.len() {
            let previous = row.set_cell(k as u32 * 2, &packed[0]);
            assert_eq!(previous, Some(wide[k - packed.len()].clone()));
        }
        assert!(row.rare.is_none(), "every cell packs again");
        // A profile stays when what did not pack is gone.
        row.set_profile(UserProfile::default());
        row.set_cell(99, &wide[0]);
        assert!(row.wide().is_some());
        row.set_cell(99, &packed[0]);
        assert!(row.wide().is_none() && row.profile().is_some());
        assert!(row
            .cells()
            .all(|(_, c)| c == packed[0] || packed.contains(&c)));
        let weights = KindWeights::default();
        row.apply(1, EventKind::Rate, Some(1.2345), 7, &weights);
        assert_eq!(row.cell(1).and_then(|c| c.rating), Some(1.2345));
        assert_eq!(row.wide().map(|w| w.cells.len()), Some(1));
    }

    #[test]
    fn a_log_with_an_event_that_does_not_pack_is_kept_whole() {
        let view = |ts_ms| Activity {
            ts_ms,
            kind: EventKind::View,
            goal: None,
        };
        let mut row = UserRow::default();
        for ts in [10, 20] {
            row.push_activity(view(ts), 3, 90);
        }
        assert!(row.rare.is_none());
        row.push_activity(view(-5), 4, 90);
        assert!(row.activity.is_empty() && row.wide_log().is_some());
        let ts: Vec<i64> = row.activity().map(|a| a.ts_ms).collect();
        assert_eq!(ts, vec![-5, 10, 20], "ordered like a packed log");
        row.push_activity(view(30), 3, 90);
        let ts: Vec<i64> = row.activity().map(|a| a.ts_ms).collect();
        assert_eq!(ts, vec![10, 20, 30], "trimmed to 3 like a packed log");
        assert!(
            row.rare.is_none(),
            "packed again once the event that did not pack is gone"
        );
        row.set_activity(vec![view(-7), view(4)]);
        assert!(row.activity.is_empty() && row.wide_log().is_some());
        assert_eq!(
            row.activity().map(|a| a.ts_ms).collect::<Vec<_>>(),
            vec![-7, 4]
        );
        let log: Vec<Activity> = vec![view(4), view(5)];
        row.set_activity(log.clone());
        assert!(row.rare.is_none(), "a log that packs is packed");
        assert_eq!(row.activity().collect::<Vec<_>>(), log);
    }

    #[test]
    fn a_user_with_one_event_allocates_nothing_beyond_the_row() {
        assert_eq!(std::mem::size_of::<UserRow>(), 64);
        let weights = KindWeights::default();
        let view = |ts_ms| Activity {
            ts_ms,
            kind: EventKind::View,
            goal: None,
        };
        let mut row = UserRow::default();
        row.apply(5, EventKind::Like, None, 1, &weights);
        row.push_activity(view(1), 100, 90);
        assert!(!row.cells.spilled() && !row.activity.spilled());
        row.apply(2, EventKind::Like, None, 2, &weights);
        row.push_activity(view(2), 100, 90);
        assert!(
            row.cells.spilled() && row.activity.spilled(),
            "the second ones move out"
        );
        assert_eq!(row.cells().map(|c| c.0).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(
            row.activity().map(|a| a.ts_ms).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_fitted_row_has_no_room_to_spare_and_the_same_contents() {
        let weights = KindWeights::default();
        let mut row = UserRow::default();
        for item in 0..20u32 {
            row.apply(item * 3, EventKind::Like, None, i64::from(item), &weights);
            row.push_activity(
                Activity {
                    ts_ms: i64::from(item),
                    kind: EventKind::View,
                    goal: Some(item),
                },
                100,
                90,
            );
        }
        assert!(row.cells.capacity() > 20, "grown by half, ahead of need");
        let (cells, activity): (Vec<_>, Vec<_>) = (row.cells().collect(), row.activity().collect());
        row.fit();
        assert_eq!((row.cells.capacity(), row.activity.capacity()), (20, 20));
        assert_eq!(row.cells().collect::<Vec<_>>(), cells);
        assert_eq!(row.activity().collect::<Vec<_>>(), activity);
        for item in 20..100u32 {
            row.apply(item * 3, EventKind::Like, None, i64::from(item), &weights);
        }
        let room = row.cells.capacity();
        assert!(room > 80);
        row.fit();
        assert_eq!(row.cells.capacity(), room, "long rows keep their room");
        let mut one = UserRow::default();
        one.apply(1, EventKind::Like, None, 1, &weights);
        one.fit();
        assert!(!one.cells.spilled(), "an inline row stays inline");
    }

    #[test]
    fn removing_a_row_keeps_the_others_reachable() {
        let mut rows = Rows::default();
        for user in [4, 9, 2] {
            rows.get_or_insert(user)
                .set_last_event_ms(Some(i64::from(user)));
        }
        assert!(rows.remove(4).is_some());
        assert!(rows.remove(4).is_none());
        for user in [9, 2] {
            assert_eq!(
                rows.get(user).and_then(UserRow::last_event_ms),
                Some(i64::from(user))
            );
        }
        assert_eq!(rows.iter().count(), 2);
    }
}
