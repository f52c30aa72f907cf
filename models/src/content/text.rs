//! Tokeniser of item text: turns an item's title, description and tags into the term counts the
//! TF-IDF index ([`super::tfidf::TfIdfIndex`]) consumes.
//!
//! Rules, in order, for free text (title and description):
//! - the text is split on every char that is not alphanumeric (`char::is_alphanumeric`, so
//!   letters and digits of any script are kept together, punctuation and apostrophes split:
//!   "Children's" gives `children` and `s`);
//! - each piece is lower-cased with the Unicode rules of `str::to_lowercase`;
//! - pieces shorter than [`Tokenizer::min_chars`] chars (default 2) or longer than
//!   [`Tokenizer::max_chars`] chars (default 40: hashes, URLs, base64 are noise and would only grow
//!   the vocabulary) are dropped;
//! - pure numbers (every char numeric, e.g. `2024`, `10`) are dropped: they rarely say anything
//!   about a goal's content and would flood the vocabulary; mixed tokens such as `5k` or `mp3`
//!   are kept;
//! - stop words are dropped (a configurable set, English by default, matched after
//!   lower-casing).
//!
//! Tags (and genres such as "Children's" or "Film-Noir") are *not* split: each distinct tag
//! becomes a single term `tag:<tag>` — trimmed, lower-cased, inner whitespace collapsed to one
//! space — so "Film-Noir" is the term `tag:film-noir` and never collides with the word `noir`
//! in a description. A tag is counted once per item (tags are a set) with weight
//! [`TermWeights::tag`]; title words count [`TermWeights::title`] per occurrence, description
//! words [`TermWeights::description`]. Use [`display_term`] to show a term to a user.

use std::collections::{BTreeMap, HashSet};

/// Prefix of the terms made from tags.
pub const TAG_PREFIX: &str = "tag:";

/// Term → (weighted) count of one item, ordered by term so iteration is deterministic.
pub type TermCounts = BTreeMap<String, u32>;

/// A small English stop-word list: articles, pronouns, auxiliaries, conjunctions, prepositions
/// and a few words common in goal descriptions that carry no topic ("get", "make", "every").
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "didn",
    "do",
    "does",
    "doesn",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "every",
    "few",
    "for",
    "from",
    "further",
    "get",
    "got",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "if",
    "in",
    "into",
    "is",
    "isn",
    "it",
    "its",
    "itself",
    "just",
    "let",
    "ll",
    "make",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "re",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "ve",
    "very",
    "was",
    "wasn",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "won",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Per-field multipliers applied when counting an item's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermWeights {
    /// Count added per occurrence of a word in the title (default 2: titles are short and
    /// on-topic).
    pub title: u32,
    /// Count added per occurrence of a word in the description (default 1).
    pub description: u32,
    /// Count of each distinct tag term (default 3: tags are curated labels).
    pub tag: u32,
}

impl Default for TermWeights {
    fn default() -> Self {
        Self {
            title: 2,
            description: 1,
            tag: 3,
        }
    }
}

/// Splits text into normalised terms; see the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    stop_words: HashSet<String>,
    min_chars: usize,
    max_chars: usize,
    weights: TermWeights,
}

impl Default for Tokenizer {
    /// English stop words, tokens of 2..=40 chars, default [`TermWeights`].
    fn default() -> Self {
        Self::new(ENGLISH_STOP_WORDS.iter().copied())
    }
}

impl Tokenizer {
    /// A tokeniser with the given stop words (lower-cased on the way in) and default lengths
    /// and weights. Pass an empty iterator to keep every word.
    pub fn new<I, S>(stop_words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            stop_words: stop_words
                .into_iter()
                .map(|w| w.as_ref().to_lowercase())
                .collect(),
            min_chars: 2,
            max_chars: 40,
            weights: TermWeights::default(),
        }
    }

    /// Sets the minimum and maximum token length in chars (a `min` of 0 behaves as 1).
    #[must_use]
    pub fn with_lengths(mut self, min_chars: usize, max_chars: usize) -> Self {
        self.min_chars = min_chars.max(1);
        self.max_chars = max_chars;
        self
    }

    /// Sets the per-field weights used by [`Tokenizer::item_terms`].
    #[must_use]
    pub fn with_weights(mut self, weights: TermWeights) -> Self {
        self.weights = weights;
        self
    }

    /// Minimum token length in chars.
    pub fn min_chars(&self) -> usize {
        self.min_chars
    }

    /// Maximum token length in chars.
    pub fn max_chars(&self) -> usize {
        self.max_chars
    }

    /// The per-field weights.
    pub fn weights(&self) -> TermWeights {
        self.weights
    }

    /// Whether `word` (already lower-cased) is a stop word.
    pub fn is_stop_word(&self, word: &str) -> bool {
        self.stop_words.contains(word)
    }

    /// The terms of free text, in order of appearance, duplicates kept.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_token(text, |t| out.push(t));
        out
    }

    fn for_each_token(&self, text: &str, mut f: impl FnMut(String)) {
        for piece in text.split(|c: char| !c.is_alphanumeric()) {
            if piece.is_empty() || piece.chars().all(char::is_numeric) {
                continue;
            }
            let token = piece.to_lowercase();
            let len = token.chars().count();
            if len < self.min_chars || len > self.max_chars || self.stop_words.contains(&token) {
                continue;
            }
            f(token);
        }
    }

    /// The weighted term counts of an item: title words × `weights.title`, description words ×
    /// `weights.description`, each distinct non-empty tag once as `tag:<tag>` × `weights.tag`.
    /// Counts saturate at `u32::MAX`.
    pub fn item_terms<T: AsRef<str>>(
        &self,
        title: &str,
        description: &str,
        tags: &[T],
    ) -> TermCounts {
        let mut counts = TermCounts::new();
        let mut add = |term: String, w: u32| {
            if w > 0 {
                let c = counts.entry(term).or_insert(0);
                *c = c.saturating_add(w);
            }
        };
        self.for_each_token(title, |t| add(t, self.weights.title));
        self.for_each_token(description, |t| add(t, self.weights.description));
        let mut seen = HashSet::new();
        for tag in tags {
            if let Some(term) = tag_term(tag.as_ref()) {
                if seen.insert(term.clone()) {
                    add(term, self.weights.tag);
                }
            }
        }
        counts
    }
}

/// The term of a tag: `tag:` + the tag trimmed, lower-cased, inner whitespace collapsed to single
/// spaces; `None` for a blank tag.
pub fn tag_term(tag: &str) -> Option<String> {
    let normalised = tag
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ");
    if normalised.is_empty() {
        None
    } else {
        Some(format!("{TAG_PREFIX}{normalised}"))
    }
}

/// A term as shown to a user (explanations): tag terms lose their `tag:` prefix.
pub fn display_term(term: &str) -> &str {
    term.strip_prefix(TAG_PREFIX).unwrap_or(term)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_lowercases_splits_and_filters() {
        let t = Tokenizer::default();
        assert_eq!(
            t.tokenize("Run a 5K in 2024: the Couch-to-5k plan, 3x/week!"),
            vec!["run", "5k", "couch", "5k", "plan", "3x", "week"]
        );
    }

    #[test]
    fn tokenize_is_unicode_aware() {
        let t = Tokenizer::default();
        assert_eq!(
            t.tokenize("ÉTUDIER le Français — Größe straße 東京タワー"),
            vec!["étudier", "le", "français", "größe", "straße", "東京タワー"]
        );
        // Non-ASCII digits are numbers too.
        assert!(t.tokenize("١٢٣ ٤٥").is_empty());
    }

    #[test]
    fn short_long_and_numeric_tokens_are_dropped() {
        let t = Tokenizer::default();
        assert!(t.tokenize("a b 1 22 333 4.5").is_empty());
        let long = "x".repeat(41);
        assert!(t.tokenize(&long).is_empty());
        assert_eq!(t.tokenize(&"y".repeat(40)).len(), 1);
    }

    #[test]
    fn stop_words_are_configurable() {
        let none = Tokenizer::new(std::iter::empty::<&str>());
        assert_eq!(none.tokenize("The plan"), vec!["the", "plan"]);
        let custom = Tokenizer::new(["PLAN"]);
        assert_eq!(custom.tokenize("The plan"), vec!["the"]);
        assert!(Tokenizer::default().is_stop_word("the"));
    }

    #[test]
    fn item_terms_weights_fields_and_keeps_tags_whole() {
        let t = Tokenizer::default();
        let counts = t.item_terms(
            "Noir marathon",
            "A marathon of noir films",
            &["Film-Noir", " Children's ", "film-noir", "", "Sci  Fi"],
        );
        let expected: TermCounts = [
            ("noir", 2 + 1),
            ("marathon", 2 + 1),
            ("films", 1),
            ("tag:film-noir", 3),
            ("tag:children's", 3),
            ("tag:sci fi", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn item_terms_respects_custom_weights() {
        let t = Tokenizer::default().with_weights(TermWeights {
            title: 1,
            description: 0,
            tag: 1,
        });
        let counts = t.item_terms("Yoga", "yoga yoga", &["Health"]);
        assert_eq!(counts.get("yoga"), Some(&1));
        assert_eq!(counts.get("tag:health"), Some(&1));
    }

    #[test]
    fn display_term_strips_tag_prefix() {
        assert_eq!(display_term("tag:film-noir"), "film-noir");
        assert_eq!(display_term("marathon"), "marathon");
        assert_eq!(tag_term("  "), None);
    }
}
