//! The guest side of the system: the module, `/dev/dmalabN`, DMA-API debug, power.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use dmalab_abi::{self as abi, DeviceInfo, Request, Stats};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Loads a module file with module parameters (`name=value ...`).
pub fn insmod_with(path: &str, params: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let params = CString::new(params).map_err(|_| "module parameters contain NUL".to_string())?;
    // SAFETY: valid fd and NUL-terminated parameter string for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if r != 0 {
        return Err(format!("finit_module {path}: {}", errno()));
    }
    Ok(())
}

/// Unloads a module (delete_module, non-blocking like rmmod).
pub fn rmmod(name: &str) -> Result<(), String> {
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated name.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, n.as_ptr(), libc::O_NONBLOCK) };
    if r != 0 {
        return Err(format!("delete_module {name}: {}", errno()));
    }
    Ok(())
}

/// The DMA-API debug error count, if CONFIG_DMA_API_DEBUG is on and debugfs mounted.
pub fn dma_api_errors() -> Option<u64> {
    std::fs::read_to_string("/sys/kernel/debug/dma-api/error_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The live DMA-API debug entries (coherent allocations and mappings) of PCI device `bdf`, from
/// `/sys/kernel/debug/dma-api/dump`; `None` without DMA-API debug.
pub fn dma_api_entries(bdf: &str) -> Option<usize> {
    let dump = std::fs::read_to_string("/sys/kernel/debug/dma-api/dump").ok()?;
    Some(
        dump.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(bdf))
            .count(),
    )
}

/// kmemleak: forget the suspects found so far (`clear`), so a later [`kmemleak_scan`] reports
/// only what leaked since. `false` when kmemleak is not on (boot with `kmemleak=on`).
pub fn kmemleak_clear() -> bool {
    std::fs::write("/sys/kernel/debug/kmemleak", "clear").is_ok()
}

/// kmemleak: scan now and return the report (empty: no leaks). kmemleak only reports objects
/// older than 5 s, so callers wait that long after the last suspect allocation.
pub fn kmemleak_scan() -> Option<String> {
    std::fs::write("/sys/kernel/debug/kmemleak", "scan").ok()?;
    std::fs::read_to_string("/sys/kernel/debug/kmemleak").ok()
}

/// The PCI addresses (`0000:00:03.0`) of every dmalab device, bound or not.
pub fn dmalab_devices() -> Vec<String> {
    let id = |bdf: &str, f: &str| {
        std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/{f}")).unwrap_or_default()
    };
    let mut found: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|bdf| {
            id(bdf, "vendor").trim() == format!("{:#06x}", abi::PCI_VENDOR_ID)
                && id(bdf, "device").trim() == format!("{:#06x}", abi::PCI_DEVICE_ID)
        })
        .collect();
    found.sort();
    found
}

/// An open `/dev/dmalabN`.
pub struct Dev {
    file: File,
}

/// An ioctl number together with the one argument type it takes. Built only by [`Ioctl::new`],
/// which checks at compile time that the size encoded in the number is the type's size, so a
/// command can never be issued with the wrong argument.
struct Ioctl<T> {
    cmd: u32,
    _arg: std::marker::PhantomData<fn(&mut T)>,
}

impl<T> Ioctl<T> {
    const fn new(cmd: u32) -> Self {
        // _IOC layout: size in bits 16..30
        assert!(((cmd >> 16) & 0x3fff) as usize == std::mem::size_of::<T>());
        Self {
            cmd,
            _arg: std::marker::PhantomData,
        }
    }
}

const INFO: Ioctl<DeviceInfo> = Ioctl::new(abi::IOC_INFO);
const STATS: Ioctl<Stats> = Ioctl::new(abi::IOC_STATS);
const SUBMIT: Ioctl<Request> = Ioctl::new(abi::IOC_SUBMIT);
const RESET: Ioctl<()> = Ioctl::new(abi::IOC_RESET);
const SUBMIT_BATCH: Ioctl<abi::Batch> = Ioctl::new(abi::IOC_SUBMIT_BATCH);
const DMA_SELFTEST: Ioctl<abi::SelfTest> = Ioctl::new(abi::IOC_DMA_SELFTEST);

/// The one place an ioctl is issued.
fn ioctl<T>(f: &File, ioc: &Ioctl<T>, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is a live, exclusive `T`, and `ioc` can only be an ioctl whose encoded
    // argument size is `size_of::<T>()` (checked in `Ioctl::new`); the ABI types are
    // `#[repr(C)]` and shared with the driver, so the kernel reads and writes exactly this
    // value. A zero-sized `T` passes a dangling but unused pointer (the command takes none).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), ioc.cmd as _, arg as *mut T) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

impl Dev {
    pub fn open(n: usize) -> Result<Self, String> {
        let path = format!("/dev/dmalab{n}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        Ok(Self { file })
    }

    pub fn info(&self) -> Result<DeviceInfo, String> {
        let mut i = DeviceInfo::default();
        ioctl(&self.file, &INFO, &mut i).map_err(|e| format!("IOC_INFO: {e}"))?;
        Ok(i)
    }

    /// IOC_INFO's errno (0: it answered).
    pub fn info_errno(&self) -> i32 {
        let mut i = DeviceInfo::default();
        ioctl(&self.file, &INFO, &mut i).map_or_else(|e| e.raw_os_error().unwrap_or(-1), |()| 0)
    }

    pub fn stats(&self) -> Result<Stats, String> {
        let mut s = Stats::default();
        ioctl(&self.file, &STATS, &mut s).map_err(|e| format!("IOC_STATS: {e}"))?;
        Ok(s)
    }

    /// Runs one request; the errno is returned as an error.
    pub fn submit(&self, req: &mut Request) -> std::io::Result<()> {
        ioctl(&self.file, &SUBMIT, req)
    }

    /// `IOC_SUBMIT_BATCH`: runs `reqs` (at most `abi::MAX_BATCH`) with as many in flight at
    /// once as the driver allows; each request's own outcome is in its `error` field. Returns
    /// how many succeeded.
    pub fn submit_batch(&self, reqs: &mut [Request]) -> std::io::Result<u32> {
        let mut b = abi::Batch {
            requests: reqs.as_mut_ptr() as u64,
            count: reqs.len() as u32,
            done: 0,
        };
        ioctl(&self.file, &SUBMIT_BATCH, &mut b)?;
        Ok(b.done)
    }

    /// `IOC_DMA_SELFTEST` on `buf` (see the ABI): how many rounds the driver verified.
    pub fn dma_selftest(&self, buf: &mut [u8], rounds: u32, queue: u32) -> std::io::Result<u32> {
        let mut t = abi::SelfTest {
            buf: buf.as_mut_ptr() as u64,
            len: buf.len() as u32,
            rounds,
            queue,
            verified: 0,
        };
        ioctl(&self.file, &DMA_SELFTEST, &mut t)?;
        Ok(t.verified)
    }

    pub fn reset(&self) -> std::io::Result<()> {
        ioctl(&self.file, &RESET, &mut ())
    }
}

pub fn power_off() -> ! {
    // SAFETY: plain syscalls; the filesystems are in RAM, nothing to sync but be polite.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(0)
}
