//! Commands beside the mining job, which are not stages of it: `gen` makes example tables,
//! `inspect` describes inputs before mining, `diff` compares two runs' outputs.

pub mod diff;
pub mod inspect;
pub mod synthetic;
