//! Offline evaluation commands: they run the same code as the server on CSV files and print
//! their metrics as JSON.

pub mod classify;
pub mod recommend;
