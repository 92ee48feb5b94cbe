//! Network byte order by type: a `Be16`/`Be32` holds its value exactly as it appears in a packet, so
//! no call site ever has to remember `to_be()`.

#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Be16(u16);

impl Be16 {
    pub const fn new(host: u16) -> Self {
        Self(host.to_be())
    }
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }
    pub const fn raw(self) -> u16 {
        self.0
    }
}

#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Be32(u32);

impl Be32 {
    pub const fn new(host: u32) -> Self {
        Self(host.to_be())
    }
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }
    pub const fn from_octets(o: [u8; 4]) -> Self {
        Self(u32::from_ne_bytes(o))
    }
    pub const fn get(self) -> u32 {
        u32::from_be(self.0)
    }
    pub const fn raw(self) -> u32 {
        self.0
    }
    pub const fn octets(self) -> [u8; 4] {
        self.0.to_ne_bytes()
    }
}

impl core::fmt::Debug for Be16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl core::fmt::Debug for Be32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.octets();
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// IP protocol numbers the datapath handles.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_order_round_trips() {
        assert_eq!(Be16::new(80).get(), 80);
        assert_eq!(Be16::new(0x1234).raw().to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(Be32::from_octets([10, 96, 0, 1]).get(), 0x0a60_0001);
        assert_eq!(Be32::new(0x0a60_0001).octets(), [10, 96, 0, 1]);
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(unsafe_code, reason = "aya::Pod for transparent wrappers of plain integers")]
    unsafe impl aya::Pod for super::Be16 {}
    unsafe impl aya::Pod for super::Be32 {}
}
