//! What more than one benchmark binary needs: the measured weft-agent
//! process ([`agent_process`]), building the API objects of a benchmark
//! ([`api`]), command-line values ([`cli`]), CPU profiles with `perf`
//! ([`perf`]), the benchmarks' JSON results ([`results`]), and
//! percentiles and paired confidence intervals ([`stats`]).

pub mod agent_process;
pub mod api;
pub mod cli;
pub mod perf;
pub mod results;
pub mod stats;
