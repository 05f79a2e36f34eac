//! Transmit checksum offload on the VXLAN device.
//!
//! Two known failures: kernels before 5.7 send SNATed VXLAN packets with a
//! bad checksum (calico#3145: 63 s stalls), and some NICs under 6.12+
//! collapse to a few hundred Mbit/s with it on (calico#11435). Measured
//! here (`bench/vxlan-offload.sh`, kernel 6.18): on is 3.2x the throughput
//! of off, and the e2e matrix (NodePort and ClusterIP through kube-proxy's
//! SNAT over VXLAN) passes with it. So the default is on, except on
//! kernels before 5.7; `vxlan.txChecksumOffload: false` is the switch for
//! the NICs of calico#11435. The state is exported as a metric. No crate
//! sets one ethtool flag without a whole ethtool netlink stack, so this is
//! the classic SIOCETHTOOL ioctl.

use std::sync::atomic::{AtomicI64, Ordering};

/// Last applied state: 1 on, 0 off, -1 unknown (for the metric).
pub static STATE: AtomicI64 = AtomicI64::new(-1);

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool(dev: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    for (dst, src) in req.name.iter_mut().zip(dev.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a plain datagram socket for the ioctl, closed below; `req`
    // and `value` outlive the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
    }
    Ok(value.data)
}

/// Sets TX checksum offload on `dev` if it differs, and records the state.
pub fn apply(dev: &str, on: bool) {
    let result = ethtool(dev, ETHTOOL_GTXCSUM, 0).and_then(|cur| {
        if (cur != 0) != on {
            ethtool(dev, ETHTOOL_STXCSUM, u32::from(on))?;
            tracing::info!(device = dev, on, "set VXLAN transmit checksum offload");
        }
        ethtool(dev, ETHTOOL_GTXCSUM, 0)
    });
    match result {
        Ok(v) => STATE.store(i64::from(v != 0), Ordering::Relaxed),
        Err(e) => {
            STATE.store(-1, Ordering::Relaxed);
            tracing::warn!(device = dev, "cannot set transmit checksum offload: {e}");
        }
    }
}

/// The default when the configuration does not say: on, except on kernels
/// before 5.7 (calico#3145).
pub fn kernel_default() -> bool {
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
