//! What more than one benchmark binary needs: building the API objects of
//! a benchmark ([`api`]), CPU profiles with `perf` ([`perf`]), and
//! percentiles and paired confidence intervals ([`stats`]).

pub mod api;
pub mod perf;
pub mod stats;
