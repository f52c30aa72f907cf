//! Churn risk tiers: the boundaries on the churn probability and the interventions each tier
//! triggers, defined here once for the scoring job, the churn route and the outbox.
//!
//! | tier | churn probability | interventions (outbox channels) |
//! |---|---|---|
//! | `high` | > 0.7 | `push`, `personalised_email`, `offer` |
//! | `medium` | 0.4 – 0.7 | `engagement_campaign`, `content_recommendations` |
//! | `low` | < 0.4 | `newsletter`, `success_stories` |

use serde::{Deserialize, Serialize};

/// A user's churn risk tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    High,
    Medium,
    Low,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::High => "high",
            Tier::Medium => "medium",
            Tier::Low => "low",
        }
    }

    /// The interventions of the tier, in the order they are appended.
    pub fn interventions(self) -> &'static [Channel] {
        match self {
            Tier::High => &[Channel::Push, Channel::PersonalisedEmail, Channel::Offer],
            Tier::Medium => &[Channel::EngagementCampaign, Channel::ContentRecommendations],
            Tier::Low => &[Channel::Newsletter, Channel::SuccessStories],
        }
    }
}

/// Tier boundaries: `high` above `high`, `medium` from `medium` up to `high`, `low` below.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierThresholds {
    pub high: f64,
    pub medium: f64,
}

impl Default for TierThresholds {
    fn default() -> Self {
        TierThresholds {
            high: 0.7,
            medium: 0.4,
        }
    }
}

impl TierThresholds {
    /// The tier of a churn probability.
    pub fn tier(&self, probability: f64) -> Tier {
        if probability > self.high {
            Tier::High
        } else if probability >= self.medium {
            Tier::Medium
        } else {
            Tier::Low
        }
    }
}

/// An outbox channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Push,
    PersonalisedEmail,
    Offer,
    EngagementCampaign,
    ContentRecommendations,
    Newsletter,
    SuccessStories,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::PersonalisedEmail => "personalised_email",
            Channel::Offer => "offer",
            Channel::EngagementCampaign => "engagement_campaign",
            Channel::ContentRecommendations => "content_recommendations",
            Channel::Newsletter => "newsletter",
            Channel::SuccessStories => "success_stories",
        }
    }
}

/// Users per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub high: usize,
    pub medium: usize,
    pub low: usize,
}

impl TierCounts {
    pub fn add(&mut self, tier: Tier) {
        match tier {
            Tier::High => self.high += 1,
            Tier::Medium => self.medium += 1,
            Tier::Low => self.low += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_the_documented_boundaries() {
        let t = TierThresholds::default();
        assert_eq!(t.tier(0.71), Tier::High);
        assert_eq!(t.tier(0.7), Tier::Medium);
        assert_eq!(t.tier(0.4), Tier::Medium);
        assert_eq!(t.tier(0.39), Tier::Low);
        assert_eq!(t.tier(0.0), Tier::Low);
        let names = |tier: Tier| {
            tier.interventions()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Tier::High), ["push", "personalised_email", "offer"]);
        assert_eq!(
            names(Tier::Medium),
            ["engagement_campaign", "content_recommendations"]
        );
        assert_eq!(names(Tier::Low), ["newsletter", "success_stories"]);
    }
}
