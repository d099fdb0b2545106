//! tripmine: mine triplets for metric learning from labelled embeddings in Parquet.
//!
//! The stages, each a module: [`io`] reads Parquet into a [`Table`]; [`index`] builds FAISS
//! indexes that propose neighbours; [`mine`] selects positives and negatives exactly;
//! [`score`] defines distances, kinds and the loss; [`report`] aggregates the loss report;
//! [`pipeline`] runs a whole job from a [`MiningConfig`]; [`cli`] is the command line;
//! [`commands`] holds the commands that are not stages (`gen`, `inspect`, `diff`).
//! [`process`] holds what a job may do to its host process (thread caps, heap trimming), all
//! scoped or opted into: the library is safe to embed.
//!
//! A trainer can mine a table it already holds, without files:
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::Int64Array;
//! use tripmine::{mine::Miner, MiningParams, NegativeStrategy, Table};
//!
//! // Two labels on a line: 0 at x = 0.0, 0.1, 0.2 and 1 at x = 0.25, 1.0.
//! let labels = Arc::new(Int64Array::from(vec![0, 0, 0, 1, 1]));
//! let vectors = vec![0.0, 0.1, 0.2, 0.25, 1.0];
//! let table = Table::from_arrays(None, labels, vectors, 1)?;
//! let params = MiningParams { negatives: NegativeStrategy::Hardest, num_negatives: tripmine::Count::AtMost(1), ..Default::default() };
//! let mined = Miner::new(&table, &params)?.mine_all()?;
//! // Every anchor with a positive gets one triplet with its nearest other-label row.
//! assert_eq!(mined.triplets.len(), 5);
//! assert_eq!(mined.triplets[0].negative, 3);
//! # Ok::<(), tripmine::Error>(())
//! ```
//!
//! A whole job (files in, files out) is [`pipeline::run`] on a [`MiningConfig`].

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "tripmine runs on Linux with glibc only: it reads /proc and calls malloc_trim, renameat2 and flock"
);

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod index;
pub mod io;
pub mod memory;
pub mod mine;
pub mod pipeline;
pub mod process;
#[cfg(feature = "python")]
mod python;
pub mod report;
pub mod score;

pub use config::{
    ColumnNames, Count, Metric, MiningConfig, MiningOptions, MiningParams, NegativeSampling,
    NegativeStrategy, PositiveStrategy,
};
pub use error::{Error, ErrorClass, Result};
pub use io::{BatchSource, Table};
pub use pipeline::{Summary, run, run_batches};
pub use score::TripletKind;

/// The README's Rust examples, compiled and run as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
