//! The integration tests, one binary (each test binary links static FAISS once): the real
//! `tripmine` binary driven on tables made in the tests, and the library against a
//! brute-force oracle.

mod common;

mod cli;
mod distributed;
mod hostile;
mod in_memory;
mod incremental;
mod incremental_retrieval;
mod index;
mod memory_limit;
mod onepass;
mod oracle;
mod pipeline;
mod properties;
mod recall;
mod reports;
mod retrieval;
mod retrieval_cli;
