//! Read-only looks at the kernel: the release, which decides the transmit
//! checksum offload default. (What weft owns is dumped by
//! `base::mirror`, its tables' digests taken by `base::netfilter`, their
//! counters read by `observe::counters`.)

/// Transmit checksum offload when the configuration does not say: on,
/// except on kernels before 5.7 (calico#3145: SNATed VXLAN packets leave
/// with a bad checksum). See `apply::kernel` for the measurements.
pub fn offload_default() -> bool {
    static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        safe_on(&release)
    })
}

/// Whether a kernel release (`6.18.44-…`) has the calico#3145 fix; an
/// unreadable release is treated as old.
fn safe_on(release: &str) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 7),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offload_is_on_from_kernel_5_7() {
        for (release, on) in [
            ("6.18.44-fc-v669", true),
            ("5.7.0", true),
            ("5.15.0-134-generic", true),
            ("5.6.19", false),
            ("4.19.0-26-amd64", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(super::safe_on(release), on, "{release}");
        }
    }
}
