//! Integration tests of the `momentum` server over HTTP (one binary, see STYLE.md).

mod bad_input;
mod common;
mod experiments;
mod persistence;
mod routes;
