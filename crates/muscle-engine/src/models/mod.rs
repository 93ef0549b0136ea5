//! Model families: configuration parsing, weight names and heads.

pub mod bert;
pub mod config;
