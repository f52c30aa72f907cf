//! The simulated goal catalogue: goals built from templates in eight categories, each in three
//! levels (starter, regular, advanced) that differ in difficulty. Difficulty decides how many
//! check-ins a goal needs and how hard each one is; the category tags drive which users pick it;
//! a per-goal popularity makes a few goals much more viewed and adopted than the rest (as in
//! any catalogue). Built from the seed, so the same seed gives the same catalogue.

use rand::rngs::StdRng;
use rand::Rng;

/// Kind of goal, written to `items.csv` as `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoalType {
    /// A daily practice (meditate, stretch).
    Habit,
    /// A target to reach (run a 5k, save a sum).
    Milestone,
    /// A time-boxed effort (30 days without sugar).
    Challenge,
}

impl GoalType {
    pub fn as_str(self) -> &'static str {
        match self {
            GoalType::Habit => "habit",
            GoalType::Milestone => "milestone",
            GoalType::Challenge => "challenge",
        }
    }
}

/// One goal of the catalogue; its item id is `g{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// Dense id: the index in [`Catalogue::goals`].
    pub id: u32,
    pub title: String,
    pub description: String,
    /// Category first, then a specific tag.
    pub tags: [&'static str; 2],
    pub goal_type: GoalType,
    /// In [0.05, 0.95].
    pub difficulty: f64,
    /// Index of the category in [`CATEGORIES`].
    pub category: usize,
    /// Relative attractiveness (> 0), independent of the user.
    pub popularity: f64,
    /// Check-ins needed to complete the goal.
    pub required_checkins: u32,
}

/// The simulated catalogue, with lookups the behaviour model needs.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub goals: Vec<Goal>,
    /// Goal ids of each category.
    pub by_category: Vec<Vec<u32>>,
    /// Cumulative popularity, for popularity-weighted draws.
    cumulative: Vec<f64>,
}

/// A goal template: title, specific tag, type, base difficulty, one-line pitch.
type Template = (&'static str, &'static str, GoalType, f64, &'static str);

/// Categories (the first tag of their goals) and their templates.
pub const CATEGORIES: [(&str, [Template; 6]); 8] = {
    use GoalType::{Challenge as C, Habit as H, Milestone as M};
    [
        (
            "fitness",
            [
                (
                    "Run a 5k",
                    "running",
                    M,
                    0.55,
                    "Build up from walking to running 5 km without stopping.",
                ),
                (
                    "Walk 10000 steps a day",
                    "walking",
                    H,
                    0.35,
                    "Get your daily steps in, rain or shine.",
                ),
                (
                    "Do 50 push-ups",
                    "strength",
                    M,
                    0.6,
                    "Grow from a few push-ups to fifty in a row.",
                ),
                (
                    "Stretch every morning",
                    "mobility",
                    H,
                    0.25,
                    "Ten minutes of stretching after waking up.",
                ),
                (
                    "Strength training three times a week",
                    "strength",
                    H,
                    0.6,
                    "Lift, squat and pull three times a week.",
                ),
                (
                    "Cycle to work",
                    "cycling",
                    C,
                    0.5,
                    "Leave the car at home and ride to work.",
                ),
            ],
        ),
        (
            "mindfulness",
            [
                (
                    "Meditate daily",
                    "meditation",
                    H,
                    0.35,
                    "Sit quietly for ten minutes every day.",
                ),
                (
                    "Keep a gratitude journal",
                    "journaling",
                    H,
                    0.25,
                    "Write down three good things each evening.",
                ),
                (
                    "Digital detox evenings",
                    "screen-time",
                    C,
                    0.55,
                    "No screens after 9 pm.",
                ),
                (
                    "Breathing exercises",
                    "breathing",
                    H,
                    0.2,
                    "Box breathing whenever stress builds up.",
                ),
                (
                    "Mindful eating",
                    "nutrition",
                    H,
                    0.4,
                    "Eat one meal a day without distractions.",
                ),
                (
                    "Silent retreat weekend",
                    "meditation",
                    M,
                    0.7,
                    "Prepare for and complete a weekend retreat.",
                ),
            ],
        ),
        (
            "learning",
            [
                (
                    "Learn Spanish",
                    "languages",
                    M,
                    0.7,
                    "Reach conversational Spanish with daily practice.",
                ),
                (
                    "Read 12 books this year",
                    "reading",
                    M,
                    0.5,
                    "One book a month, a few pages every day.",
                ),
                (
                    "Learn to code",
                    "programming",
                    M,
                    0.75,
                    "Finish an introductory programming course.",
                ),
                (
                    "Practice piano",
                    "music",
                    H,
                    0.6,
                    "Twenty minutes at the keyboard every day.",
                ),
                (
                    "Finish an online course",
                    "courses",
                    M,
                    0.55,
                    "Complete every module of a course you started.",
                ),
                (
                    "Learn to draw",
                    "art",
                    H,
                    0.5,
                    "Sketch a little every day and watch yourself improve.",
                ),
            ],
        ),
        (
            "health",
            [
                (
                    "Drink two litres of water",
                    "hydration",
                    H,
                    0.2,
                    "Stay hydrated through the day.",
                ),
                (
                    "Sleep eight hours",
                    "sleep",
                    H,
                    0.45,
                    "A regular bedtime and a full night of sleep.",
                ),
                (
                    "Cut out sugar",
                    "nutrition",
                    C,
                    0.65,
                    "Thirty days without added sugar.",
                ),
                (
                    "Eat five vegetables a day",
                    "nutrition",
                    H,
                    0.4,
                    "Five portions of vegetables every day.",
                ),
                (
                    "Alcohol-free month",
                    "alcohol",
                    C,
                    0.55,
                    "A month without a drink.",
                ),
                (
                    "Quit smoking",
                    "smoking",
                    M,
                    0.85,
                    "Step down and stop for good.",
                ),
            ],
        ),
        (
            "finance",
            [
                (
                    "Save ten percent of income",
                    "saving",
                    H,
                    0.5,
                    "Move a tenth of every pay cheque to savings.",
                ),
                (
                    "Track every expense",
                    "budgeting",
                    H,
                    0.4,
                    "Log each purchase the day you make it.",
                ),
                (
                    "No-spend weekends",
                    "budgeting",
                    C,
                    0.45,
                    "Weekends without buying anything.",
                ),
                (
                    "Build an emergency fund",
                    "saving",
                    M,
                    0.7,
                    "Three months of expenses set aside.",
                ),
                (
                    "Pay off a credit card",
                    "debt",
                    M,
                    0.65,
                    "Clear the balance and keep it at zero.",
                ),
                (
                    "Cook at home",
                    "cooking",
                    H,
                    0.35,
                    "Cook instead of ordering in.",
                ),
            ],
        ),
        (
            "productivity",
            [
                (
                    "Inbox zero",
                    "email",
                    H,
                    0.4,
                    "End each work day with an empty inbox.",
                ),
                (
                    "Wake up at six",
                    "routine",
                    H,
                    0.6,
                    "Get up at six every weekday.",
                ),
                (
                    "Plan tomorrow tonight",
                    "planning",
                    H,
                    0.25,
                    "Five minutes of planning before bed.",
                ),
                (
                    "Two hours of deep work",
                    "focus",
                    H,
                    0.55,
                    "Two uninterrupted hours on what matters.",
                ),
                (
                    "Declutter the home",
                    "home",
                    M,
                    0.45,
                    "One drawer, shelf or room at a time.",
                ),
                (
                    "Finish a side project",
                    "projects",
                    M,
                    0.75,
                    "Ship the project that has waited too long.",
                ),
            ],
        ),
        (
            "social",
            [
                (
                    "Call a friend every week",
                    "friends",
                    H,
                    0.25,
                    "Catch up with someone you care about.",
                ),
                (
                    "Volunteer every month",
                    "volunteering",
                    H,
                    0.45,
                    "Give a few hours to a local cause.",
                ),
                (
                    "Family dinner",
                    "family",
                    H,
                    0.3,
                    "Eat together without phones.",
                ),
                (
                    "Write letters",
                    "writing",
                    H,
                    0.35,
                    "Send a handwritten letter every week.",
                ),
                (
                    "Join a club",
                    "community",
                    M,
                    0.5,
                    "Find a group that shares your interests.",
                ),
                (
                    "Public speaking",
                    "speaking",
                    M,
                    0.8,
                    "Prepare and give a talk in front of people.",
                ),
            ],
        ),
        (
            "creativity",
            [
                (
                    "Write 500 words a day",
                    "writing",
                    H,
                    0.55,
                    "Five hundred words, every day.",
                ),
                (
                    "A photo a day",
                    "photography",
                    C,
                    0.3,
                    "One photograph every day for a year.",
                ),
                (
                    "Learn guitar",
                    "music",
                    M,
                    0.65,
                    "From first chords to a full song.",
                ),
                ("Sketch daily", "art", H, 0.4, "A quick sketch every day."),
                (
                    "Start a blog",
                    "blogging",
                    M,
                    0.5,
                    "Publish your first ten posts.",
                ),
                (
                    "Write a short story",
                    "writing",
                    M,
                    0.6,
                    "From idea to a finished story.",
                ),
            ],
        ),
    ]
};

/// Levels of each template: title suffix, description suffix, difficulty shift.
const LEVELS: [(&str, &str, f64); 3] = [
    (" (starter)", "A gentle start for beginners.", -0.2),
    ("", "The classic version.", 0.0),
    (" (advanced)", "For those who want a real stretch.", 0.2),
];

impl Catalogue {
    /// The catalogue for a seed: every template in every level (144 goals), difficulty jittered
    /// by ±0.05, popularity log-normal-ish.
    pub fn build(rng: &mut StdRng) -> Self {
        let mut goals = Vec::new();
        let mut by_category = vec![Vec::new(); CATEGORIES.len()];
        for (category, (name, templates)) in CATEGORIES.iter().enumerate() {
            for &(title, tag, goal_type, base, pitch) in templates {
                for &(title_suffix, level_text, shift) in &LEVELS {
                    let id = goals.len() as u32;
                    let difficulty = (base + shift + rng.gen_range(-0.05..0.05)).clamp(0.05, 0.95);
                    // Popularity: heavy-tailed, starter levels a little more attractive.
                    let popularity = (rng.gen_range(-1.0f64..1.0) * 1.5).exp() * (1.2 - shift);
                    goals.push(Goal {
                        id,
                        title: format!("{title}{title_suffix}"),
                        description: format!("{pitch} {level_text}"),
                        tags: [name, tag],
                        goal_type,
                        difficulty,
                        category,
                        popularity,
                        required_checkins: required_checkins(difficulty, goal_type),
                    });
                    by_category[category].push(id);
                }
            }
        }
        let mut total = 0.0;
        let cumulative = goals
            .iter()
            .map(|g| {
                total += g.popularity;
                total
            })
            .collect();
        Self {
            goals,
            by_category,
            cumulative,
        }
    }

    /// A goal drawn in proportion to popularity.
    pub fn popular(&self, rng: &mut StdRng) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.gen::<f64>() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.goals.len().saturating_sub(1)) as u32
    }
}

/// Check-ins a goal needs: 5 for the easiest, 30 for the hardest; challenges are a little
/// longer (they are time-boxed efforts).
fn required_checkins(difficulty: f64, goal_type: GoalType) -> u32 {
    let extra = if goal_type == GoalType::Challenge {
        3.0
    } else {
        0.0
    };
    (5.0 + 25.0 * difficulty + extra).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn catalogue_is_complete_and_seeded() {
        let a = Catalogue::build(&mut StdRng::seed_from_u64(1));
        assert_eq!(a.goals.len(), 8 * 6 * 3);
        assert!(a
            .goals
            .iter()
            .all(|g| (0.05..=0.95).contains(&g.difficulty) && g.popularity > 0.0));
        assert!(a.goals.iter().enumerate().all(|(i, g)| g.id as usize == i));
        assert_eq!(
            a.by_category.iter().map(Vec::len).sum::<usize>(),
            a.goals.len()
        );
        let b = Catalogue::build(&mut StdRng::seed_from_u64(1));
        assert_eq!(a.goals, b.goals);
        let mut rng = StdRng::seed_from_u64(2);
        assert!((0..100).all(|_| (a.popular(&mut rng) as usize) < a.goals.len()));
    }
}
