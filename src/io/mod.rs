//! Parquet in and out.
//!
//! In: input paths (files, folders, globs) and column names. Out: a [`Table`] of contiguous
//! `f32` vectors with ids and labels in their input types (or, in retrieval mode, a corpus
//! and [`Queries`] with their known positives); on the way back, atomic Parquet
//! writers ([`ParquetSink`], [`write_parquet`]); and a distributed run's prepared table
//! ([`save_table`], [`open_table`]).

mod kept;
mod paths;
mod prepared;
mod read;
mod retrieval;
mod table;
mod vectors;
mod write;

pub(crate) use kept::save_kept;
pub use kept::{KeptFacts, KeptRows};
pub use paths::resolve_inputs;
pub use prepared::{PreparedTable, open_table, save_table};
pub use read::{BatchSource, ReadOptions, read_table, read_table_from_batches, read_table_with};
pub(crate) use read::{open_parquet, read_columns};
pub use retrieval::{Queries, read_retrieval};
pub use table::{Labels, SourceFile, Table};
pub use vectors::{ReorderedRows, Sweeper, Vectors, sweep};
pub use write::{
    AtomicPath, ParquetSink, PartitionedSink, SUCCESS_MARKER, TripletSink, is_folder_output,
    write_atomic, write_parquet, write_parquet_into,
};
