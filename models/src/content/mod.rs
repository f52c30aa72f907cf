//! Content-based scoring: tokeniser, incremental TF-IDF with an inverted index, hybrid mixing and diversity re-ranking.
