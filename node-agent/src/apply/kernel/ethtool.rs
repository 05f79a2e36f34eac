//! The SIOCETHTOOL ioctl, for the one flag weft sets.

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

/// Whether transmit checksum offload is on.
pub fn tx_checksum(dev: &str) -> std::io::Result<bool> {
    ethtool(dev, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Turns transmit checksum offload on or off.
pub fn set_tx_checksum(dev: &str, on: bool) -> std::io::Result<()> {
    ethtool(dev, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}
