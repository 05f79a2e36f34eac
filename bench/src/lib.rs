//! What more than one benchmark binary needs and every one of them uses in
//! full: building the API objects of a benchmark ([`api`]).

pub mod api;
