//! What more than one benchmark binary needs: building the API objects of
//! a benchmark ([`api`]), and CPU profiles with `perf` ([`perf`]).

pub mod api;
pub mod perf;
