//! Integration tests of the `momentum` server over HTTP, in one test binary so the server
//! crate is linked once.

mod admission;
mod bad_input;
mod cluster;
mod cluster_bridge;
mod common;
mod console;
mod contract;
mod corpus;
mod experiments;
mod item_model;
mod models;
mod ops;
mod persistence;
mod predictions;
mod routes;
mod store_safety;
