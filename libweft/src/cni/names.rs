//! The rules for container IDs and interface names. `CNI_CONTAINERID` and
//! `CNI_IFNAME` are checked against them, and the IPAM store's file names
//! and records rely on them, so they exist once, here.

/// Longest container ID accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID_LEN: usize = 200;

/// The spec's rule: an alphanumeric, then alphanumerics, `_`, `.` or `-`
/// (so never `@`, `/` or a newline). `Err` says which rule it breaks.
pub fn check_container_id(id: &str) -> Result<(), &'static str> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= MAX_CONTAINER_ID_LEN {
        Ok(())
    } else {
        Err("must start with [A-Za-z0-9] and contain only [A-Za-z0-9_.-] (at most 200)")
    }
}

/// The kernel's rule (`dev_valid_name`): 1-15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace; control characters are refused as well.
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err("is not a valid interface name (1-15 bytes, no '/', ':' or spaces)") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_the_spec() {
        for ok in ["abc", "ABC-def_1.2", "0", &"a".repeat(MAX_CONTAINER_ID_LEN)] {
            assert!(check_container_id(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "-abc", ".a", "a/b", "a@b", "a b", "a\nb", "a:b", &"a".repeat(MAX_CONTAINER_ID_LEN + 1)] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        for ok in ["eth0", "net1", "a@b", "a.b", "0123456789abcde"] {
            assert!(check_ifname(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "0123456789abcdef", "a b", "a:b", "a/b", "a\tb", "a\nb"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
