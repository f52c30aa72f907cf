//! The command line: `momentum [serve]`, `momentum eval recommend|classify`, `momentum train`,
//! `momentum store check|recover`.
//! Scripts and operators depend on these names, so they only ever grow.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Momentum: the machine-learning backend of a goal-tracking app.
#[derive(Debug, Parser)]
#[command(name = "momentum", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// Offline evaluation of the recommendation and classification models.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Train the app's success and churn models offline from a simulator events CSV.
    Train(TrainArgs),
    /// Inspect or repair the configured store (stop the server first).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum StoreCommand {
    /// Report what is readable; exit status 0 only if the store is intact.
    Check,
    /// Rebuild a damaged store from its newest intact snapshot and its readable log (the
    /// embedded file is kept aside as `momentum.redb.damaged-<unix ms>`).
    Recover,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// A TOML configuration file layered over the embedded defaults.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on, overriding `server.bind`.
    #[arg(long)]
    pub bind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Replay training ratings through the live actors and score top-k recommendations.
    Recommend(RecommendArgs),
    /// Train a classifier on a CSV table and score it on another.
    Classify(ClassifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RecommendArgs {
    /// Training ratings: `user_id,item_id,rating,timestamp`.
    #[arg(long)]
    pub train: PathBuf,
    /// Held-out ratings in the same format.
    #[arg(long)]
    pub test: PathBuf,
    /// Optional item metadata: `item_id,title,genres` (genres `|`-separated).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Which scores to use: the configured hybrid mix, collaborative only (`cf`: the configured
    /// item model and user-based mix), one CF signal alone (`item`: item cosine, `user`:
    /// user-based, `ease`: the learned item model), or content only.
    #[arg(long, value_enum, default_value_t = RecommendMode::Hybrid)]
    pub mode: RecommendMode,
    /// Mix the content score into the single-signal modes (`item`, `user`, `ease`) with the
    /// configured weights, as the hybrid does.
    #[arg(long)]
    pub with_content: bool,
    /// Turn the diversity re-rank off (relevance order, no caps).
    #[arg(long)]
    pub no_diversity: bool,
    /// Number of recommendations per user.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Where to write `user_id,item_id,rank`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecommendMode {
    Cf,
    Content,
    Hybrid,
    Item,
    User,
    Ease,
}

impl RecommendMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RecommendMode::Cf => "cf",
            RecommendMode::Content => "content",
            RecommendMode::Hybrid => "hybrid",
            RecommendMode::Item => "item",
            RecommendMode::User => "user",
            RecommendMode::Ease => "ease",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// Training table (CSV with a header).
    #[arg(long)]
    pub train: PathBuf,
    /// Test table with the same columns.
    #[arg(long)]
    pub test: PathBuf,
    /// Name of the label column.
    #[arg(long)]
    pub target: String,
    /// Value of the label column that counts as the positive class.
    #[arg(long)]
    pub positive: String,
    /// Which model to train.
    #[arg(long, value_enum, default_value_t = ClassifierKind::Logistic)]
    pub model: ClassifierKind,
    /// Where to write `row,probability` for the test rows, in order.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassifierKind {
    Logistic,
    Forest,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Events CSV as `momentum-load simulate` writes it: `event_id,user_id,item_id,kind,value,ts`.
    #[arg(long)]
    pub events: PathBuf,
    /// Days of events before the last one to learn from (default: `trainer.window_days` of the
    /// configuration, 90; the other `[trainer]` and `[models]` keys come from `--config` too).
    #[arg(long)]
    pub window_days: Option<u32>,
    /// Learning rate of the success model (default: `trainer.success_learning_rate`).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Write both trained models and their metadata as JSON into this directory.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_config_reaches_every_command() {
        for argv in [
            [
                "momentum", "--config", "c.toml", "train", "--events", "e.csv",
            ],
            [
                "momentum", "train", "--events", "e.csv", "--config", "c.toml",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            assert!(matches!(cli.command, Some(Command::Train(_))), "{argv:?}");
            assert_eq!(cli.serve.config, Some(PathBuf::from("c.toml")), "{argv:?}");
        }
        let cli = Cli::try_parse_from(["momentum", "store", "recover", "--config", "c.toml"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Store(StoreCommand::Recover))
        ));
        assert_eq!(cli.serve.config, Some(PathBuf::from("c.toml")));
    }
}
