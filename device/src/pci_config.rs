//! PCI configuration space of the device: a type-0 header with one 32-bit memory BAR, an MSI-X
//! capability (table and PBA in BAR0) and an MSI capability for hosts without MSI-X.

use dmalab_abi as abi;

/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = 0x40;
/// Offset of the MSI capability.
pub const MSI_CAP: usize = 0x50;
/// Size of the configuration space served.
pub const CONFIG_SIZE: usize = 256;

const CAP_ID_MSIX: u8 = 0x11;
const CAP_ID_MSI: u8 = 0x05;

/// Config space bytes plus, per byte, which bits the guest may write.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    reset_bytes: [u8; CONFIG_SIZE],
}

impl ConfigSpace {
    /// The configuration space of a device with `vectors` MSI-X vectors.
    pub fn new(vectors: u16) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            reset_bytes: [0; CONFIG_SIZE],
        };
        c.set16(0x00, abi::PCI_VENDOR_ID, 0);
        c.set16(0x02, abi::PCI_DEVICE_ID, 0);
        // command: I/O, memory, bus master, parity, SERR, INTx disable
        c.set16(0x04, 0, 0x0547);
        // status: capability list
        c.set16(0x06, 1 << 4, 0);
        c.bytes[0x08] = abi::PCI_REVISION;
        c.bytes[0x09] = abi::PCI_CLASS as u8;
        c.bytes[0x0a] = (abi::PCI_CLASS >> 8) as u8;
        c.bytes[0x0b] = (abi::PCI_CLASS >> 16) as u8;
        c.wmask[0x0c] = 0xff; // cache line size
                              // BAR0: 32-bit, non-prefetchable memory; the address bits above the size are writable
        c.set32(0x10, 0, !(abi::BAR0_SIZE as u32 - 1));
        c.set16(0x2c, abi::PCI_SUBSYS_VENDOR_ID, 0);
        c.set16(0x2e, abi::PCI_SUBSYS_ID, 0);
        c.bytes[0x34] = MSIX_CAP as u8;
        c.wmask[0x3c] = 0xff; // interrupt line
        c.bytes[0x3d] = 1; // INTA#

        // MSI-X: message control = table size - 1; enable and function mask writable
        c.bytes[MSIX_CAP] = CAP_ID_MSIX;
        c.bytes[MSIX_CAP + 1] = MSI_CAP as u8;
        c.set16(MSIX_CAP + 2, vectors - 1, 0xc000);
        c.set32(MSIX_CAP + 4, abi::MSIX_TABLE_OFFSET, 0); // BIR 0
        c.set32(MSIX_CAP + 8, abi::MSIX_PBA_OFFSET, 0); // BIR 0

        // MSI: one vector, 64-bit address
        c.bytes[MSI_CAP] = CAP_ID_MSI;
        c.bytes[MSI_CAP + 1] = 0;
        c.set16(MSI_CAP + 2, 1 << 7, 0x0071);
        c.set32(MSI_CAP + 4, 0, 0xffff_fffc);
        c.set32(MSI_CAP + 8, 0, 0xffff_ffff);
        c.set16(MSI_CAP + 12, 0, 0xffff);
        c.reset_bytes = c.bytes;
        c
    }

    fn set16(&mut self, off: usize, v: u16, wmask: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self.wmask[off..off + 2].copy_from_slice(&wmask.to_le_bytes());
    }

    fn set32(&mut self, off: usize, v: u32, wmask: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self.wmask[off..off + 4].copy_from_slice(&wmask.to_le_bytes());
    }

    /// Reads `data.len()` bytes at `offset`; bytes beyond the space read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes through the write mask; read-only bits and bytes beyond the space are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(base) = usize::try_from(offset) else {
            return;
        };
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = base.checked_add(i) else {
                return;
            };
            if o < CONFIG_SIZE {
                let m = self.wmask[o];
                self.bytes[o] = (self.bytes[o] & !m) | (v & m);
            }
        }
    }

    /// BAR0's guest-physical base as the guest programmed it (0 until it has).
    pub fn bar0(&self) -> u64 {
        let mut b = [0u8; 4];
        self.read(0x10, &mut b);
        // a 32-bit memory BAR: the low 4 bits are type flags
        u64::from(u32::from_le_bytes(b) & !0xf)
    }

    /// Bus Master Enable: bit 2 of the command register (0 at power-on).
    pub fn bus_master(&self) -> bool {
        self.bytes[0x04] & 1 << 2 != 0
    }

    /// Memory Space Enable: bit 1 of the command register (0 at power-on).
    pub fn memory_space(&self) -> bool {
        self.bytes[0x04] & 1 << 1 != 0
    }

    /// Back to power-on values (device reset).
    pub fn reset(&mut self) {
        self.bytes = self.reset_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_class_and_capabilities() {
        let c = ConfigSpace::new(5);
        assert_eq!(
            r32(&c, 0),
            u32::from(abi::PCI_DEVICE_ID) << 16 | u32::from(abi::PCI_VENDOR_ID)
        );
        assert_eq!(r32(&c, 8) >> 8, abi::PCI_CLASS);
        assert_eq!(r32(&c, 0x34) & 0xff, MSIX_CAP as u32);
        let msix = r32(&c, MSIX_CAP as u64);
        assert_eq!(msix & 0xff, 0x11);
        assert_eq!(msix >> 16, 4, "table size is N-1");
        assert_eq!(r32(&c, MSIX_CAP as u64 + 8), abi::MSIX_PBA_OFFSET);
    }

    #[test]
    fn bar_sizing_and_read_only_fields() {
        let mut c = ConfigSpace::new(5);
        c.write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(r32(&c, 0x10), !(abi::BAR0_SIZE as u32 - 1));
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(r32(&c, 0) & 0xffff, u32::from(abi::PCI_VENDOR_ID));
        c.write(4, &[0x06, 0]);
        assert_eq!(r32(&c, 4) & 0xffff, 0x06);
        c.reset();
        assert_eq!(r32(&c, 4) & 0xffff, 0);
    }
}
