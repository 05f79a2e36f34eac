//! Transmit checksum offload on the VXLAN device.
//!
//! With offload on, some kernels hand VXLAN packets with a bad checksum to
//! the underlay (calico#3145: 63 s stalls; calico#11435: throughput collapse
//! on 6.12+). Turning it off costs a software checksum per packet. weft
//! turns it off by default (see the README for the measurement) and reports
//! the state as a metric. No crate sets one ethtool flag without pulling in
//! a whole ethtool netlink stack, so this is the classic SIOCETHTOOL ioctl.

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
