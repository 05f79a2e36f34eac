//! Apply: make each output match the desired state, and report what
//! changed. One module per output, each with its own error type: the kernel
//! (rtnetlink and one ioctl), the nftables table, the plugin's files, and
//! the own Node's annotations through the API.

pub mod api;
pub mod fastpath;
pub mod files;
pub mod kernel;
pub mod nft_elements;
pub mod policy;
pub mod policy_table;
pub mod verdicts;
pub mod weft_table;
