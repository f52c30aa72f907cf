//! Integration tests of the `momentum` server over HTTP (one binary, see STYLE.md).

mod admission;
mod bad_input;
mod common;
mod console;
mod contract;
mod corpus;
mod experiments;
mod models;
mod ops;
mod persistence;
mod predictions;
mod routes;
mod store_safety;
