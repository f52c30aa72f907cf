//! Integration tests of the `momentum` server over HTTP (one binary, see STYLE.md).

mod bad_input;
mod common;
mod contract;
mod corpus;
mod experiments;
mod models;
mod ops;
mod persistence;
mod predictions;
mod routes;
