//! The guest side of the system: the module, `/dev/dmalabN`, DMA-API debug, power.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use dmalab_abi::{self as abi, DeviceInfo, Request, Stats};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Loads a module file (finit_module).
pub fn insmod(path: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let params = CString::new("").unwrap();
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

/// An open `/dev/dmalabN`.
pub struct Dev {
    file: File,
}

fn ioctl<T>(f: &File, cmd: u32, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: `arg` points to a live, properly sized `#[repr(C)]` value matching `cmd`'s size.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, arg) };
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
        ioctl(&self.file, abi::IOC_INFO, &mut i).map_err(|e| format!("IOC_INFO: {e}"))?;
        Ok(i)
    }

    pub fn stats(&self) -> Result<Stats, String> {
        let mut s = Stats::default();
        ioctl(&self.file, abi::IOC_STATS, &mut s).map_err(|e| format!("IOC_STATS: {e}"))?;
        Ok(s)
    }

    /// Runs one request; the errno is returned as an error.
    pub fn submit(&self, req: &mut Request) -> std::io::Result<()> {
        ioctl(&self.file, abi::IOC_SUBMIT, req)
    }

    pub fn reset(&self) -> std::io::Result<()> {
        ioctl(&self.file, abi::IOC_RESET, std::ptr::null_mut::<u8>())
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
