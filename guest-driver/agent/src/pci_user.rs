//! PCI devices driven from user space, beside (or instead of) a kernel driver: a BAR mapped
//! through sysfs, bus mastering switched on, and locked pages with the bus addresses a device
//! without an IOMMU uses (their physical addresses, from `/proc/self/pagemap`). For QEMU's edu
//! (which has no kernel driver), dmalab's `FAULT_EPOCH` register (a test-harness register,
//! written beside whatever driver is bound) and the hostile-guest scenario.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Turns on memory decoding (`enable`) and bus mastering (the command register) of the device
/// at sysfs path `dev`, so it answers its BAR and may DMA.
pub fn enable_bus_master(dev: &str) -> Result<(), String> {
    std::fs::write(format!("{dev}/enable"), "1").map_err(|e| format!("{dev}/enable: {e}"))?;
    let cfg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{dev}/config"))
        .map_err(|e| format!("{dev}/config: {e}"))?;
    let mut cmd = [0u8; 2];
    cfg.read_exact_at(&mut cmd, 4).map_err(|e| e.to_string())?;
    // memory space + bus master
    let cmd = u16::from_le_bytes(cmd) | 0x6;
    cfg.write_all_at(&cmd.to_le_bytes(), 4)
        .map_err(|e| e.to_string())
}

/// A PCI device's BAR mapped through sysfs (`resourceN`).
pub struct MappedBar {
    base: *mut u8,
    len: usize,
}

// SAFETY: a device mapping; its accesses are volatile, whole registers.
unsafe impl Send for MappedBar {}

impl MappedBar {
    /// Maps BAR `bar` of the device at sysfs path `dev` (`/sys/bus/pci/devices/...`).
    pub fn open(dev: &str, bar: u8) -> Result<Self, String> {
        let path = format!("{dev}/resource{bar}");
        let res = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        let len = res.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: a fresh shared mapping of the BAR file; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                res.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", errno()));
        }
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    fn at<T>(&self, off: usize) -> *mut T {
        assert!(
            off.is_multiple_of(std::mem::size_of::<T>())
                && off + std::mem::size_of::<T>() <= self.len,
            "register {off:#x} outside the BAR or misaligned"
        );
        // SAFETY: in bounds of the mapping, checked above.
        unsafe { self.base.add(off).cast() }
    }

    /// Writes a whole register (u32 or u64).
    pub fn write<T: Copy>(&self, off: usize, v: T) {
        // SAFETY: `at` checked bounds and alignment; device memory is accessed volatile only.
        unsafe { std::ptr::write_volatile(self.at::<T>(off), v) }
    }

    /// Reads a whole register (u32 or u64).
    pub fn read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: as in `write`.
        unsafe { std::ptr::read_volatile(self.at::<T>(off)) }
    }
}

impl Drop for MappedBar {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Locked pages with their physical addresses (the bus addresses without an IOMMU).
pub struct Pages {
    base: *mut u8,
    /// Each page's physical address.
    pub phys: Vec<u64>,
}

// SAFETY: the pages are owned by this value; every access is through its methods.
unsafe impl Send for Pages {}

impl Pages {
    pub fn new(n: usize) -> Result<Self, String> {
        // SAFETY: a fresh anonymous mapping, populated and locked so the pages stay put.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let base = p.cast::<u8>();
        let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut phys = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: inside the mapping; a write makes the page present and private.
            unsafe { base.add(i * PAGE).write_volatile(1) };
            let va = base as u64 + (i * PAGE) as u64;
            let mut e = [0u8; 8];
            pagemap
                .read_exact_at(&mut e, va / PAGE as u64 * 8)
                .map_err(|e| format!("pagemap read: {e}"))?;
            let e = u64::from_le_bytes(e);
            if e >> 63 == 0 || e & ((1 << 55) - 1) == 0 {
                return Err("pagemap shows no PFN (not root?)".into());
            }
            phys.push((e & ((1 << 55) - 1)) * PAGE as u64);
        }
        Ok(Self { base, phys })
    }

    pub fn fill(&self, page: usize, byte: u8) {
        // SAFETY: page < n: inside the mapping.
        unsafe { std::ptr::write_bytes(self.base.add(page * PAGE), byte, PAGE) };
    }

    pub fn write(&self, page: usize, off: usize, data: &[u8]) {
        assert!(off + data.len() <= PAGE);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the page; volatile because the device reads it.
            unsafe { self.base.add(page * PAGE + off + i).write_volatile(*b) };
        }
    }

    pub fn byte(&self, page: usize, off: usize) -> u8 {
        // SAFETY: inside the mapping; volatile because the device may write it.
        unsafe { self.base.add(page * PAGE + off).read_volatile() }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `phys.len()` pages, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.phys.len() * PAGE) };
    }
}
