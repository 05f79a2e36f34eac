//! The bottom layer, under observe, desired and apply: what they share and
//! nothing that knows about them. [`names`] holds every marker by which
//! weft knows its kernel objects; [`netfilter`] speaks to nftables (the
//! `nft` process and nfnetlink framing); [`mirror`] is the in-memory copy
//! of what weft owns in the kernel, kept by observe's notification readers
//! and by apply's writes. `crate::metrics` is the other leaf.
//!
//! Nothing here imports from the layers above (`tests/layers.rs` checks).

pub mod mirror;
pub mod names;
pub mod netfilter;
