//! The IPAM store's files (libweft/src/ipam/disk.rs): a file name and a
//! content, read as every kind of record. Anything left on disk is
//! untrusted; a parsed record written back must read the same, and file
//! names must be canonical, so one address or attachment never has two files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libweft::ipam::disk::{
    check_attachment, format_index, format_owner, index_name, parse_cursor, parse_index, parse_index_name,
    parse_ip_name, parse_owner,
};

fuzz_target!(|data: &[u8]| {
    // First line: a file name; the rest: the file's content, decoded like
    // the store's reader does (invalid UTF-8 becomes U+FFFD).
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let name = String::from_utf8_lossy(&data[..split]);
    let content = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());

    if let Some(ip) = parse_ip_name(&name) {
        assert_eq!(ip.to_string(), name);
    }
    if let Some(att) = parse_index_name(&name) {
        assert!(check_attachment(&att).is_ok());
        assert_eq!(index_name(&att), name);
    }
    if let Some(owner) = parse_owner(&content) {
        assert!(check_attachment(&owner).is_ok());
        assert_eq!(format_owner(&owner), content);
    }
    let ips = parse_index(&content);
    assert_eq!(parse_index(&format_index(&ips)), ips);
    if let Some(ip) = parse_cursor(&content) {
        assert_eq!(parse_cursor(&format!("{ip}\n")), Some(ip));
    }
});
