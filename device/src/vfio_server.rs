//! Serving the device to QEMU over vfio-user (our own message layer, [`crate::vfio_user`]).
//!
//! The server loop is single-threaded and owns config space and the DMA map table; BAR0 writes
//! reach the device model, which hands work to its queue workers. Workers touch guest memory
//! through the memfd mappings directly and never message the client, so a register access can
//! never deadlock against a DMA.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use log::{debug, error, info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
};

use crate::device::Device;
use crate::eventlog::{Event, EventLog, RING_UNMAPPED_WHILE_ENABLED};
use crate::interrupts::InterruptSink;
use crate::memory::MapTable;
use crate::pci_config::{ConfigSpace, CONFIG_SIZE};
use crate::vfio_user::{
    Backend, Errno, IrqAction, IrqInfo, RegionInfo, IRQ_INFO_EVENTFD, REGION_FLAG_READ,
    REGION_FLAG_WRITE,
};
use dmalab_abi as abi;

/// Interrupt eventfds handed over by SET_IRQS.
#[derive(Default)]
struct Fds {
    msix: Vec<Option<File>>,
    msi: Option<File>,
    intx: Option<File>,
}

/// Delivers interrupts through the client's eventfds: MSI-X vector v if the client gave one,
/// else the single MSI vector, else INTx. An MSI or MSI-X message is a write by the device: none
/// goes out while Bus Master Enable is clear (INTx is a wire, not a write, and still does).
#[derive(Default)]
pub struct EventfdSink {
    fds: RwLock<Fds>,
    bus_master: std::sync::atomic::AtomicBool,
}

impl InterruptSink for EventfdSink {
    fn raise(&self, vector: u16) -> bool {
        let fds = self.fds.read().unwrap();
        let message = fds
            .msix
            .get(vector as usize)
            .and_then(Option::as_ref)
            .or(fds.msi.as_ref());
        if message.is_some() && !self.bus_master.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let target = message.or(fds.intx.as_ref());
        match target {
            // The descriptors are non-blocking eventfds (checked at SET_IRQS), so a write never
            // stalls a worker; it fails only if the counter would overflow, which merges with
            // the interrupt already pending. Any failure is reported as undelivered.
            Some(mut f) => f.write(&1u64.to_le_bytes()).is_ok_and(|n| n == 8),
            None => false,
        }
    }
}

impl EventfdSink {
    /// A client's TRIGGER: signals exactly the eventfd assigned to sub-index `sub` of
    /// interrupt `index` (INTx and MSI have only sub-index 0), not whatever the device would
    /// raise for a vector of that number. Message-signalled interrupts obey Bus Master Enable
    /// as the device's own do. Returns whether an eventfd was signalled.
    fn trigger(&self, index: u32, sub: u32) -> bool {
        let fds = self.fds.read().unwrap();
        let (target, message) = match (index, sub) {
            (VFIO_PCI_MSIX_IRQ_INDEX, k) => {
                (fds.msix.get(k as usize).and_then(Option::as_ref), true)
            }
            (VFIO_PCI_MSI_IRQ_INDEX, 0) => (fds.msi.as_ref(), true),
            (VFIO_PCI_INTX_IRQ_INDEX, 0) => (fds.intx.as_ref(), false),
            _ => (None, false),
        };
        if message && !self.bus_master.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        target.is_some_and(|mut f| f.write(&1u64.to_le_bytes()).is_ok_and(|n| n == 8))
    }

    fn set(&self, action: IrqAction) {
        let mut all = self.fds.write().unwrap();
        match action {
            IrqAction::DisableAll { index } => match index {
                VFIO_PCI_MSIX_IRQ_INDEX => all.msix.iter_mut().for_each(|s| *s = None),
                VFIO_PCI_MSI_IRQ_INDEX => all.msi = None,
                VFIO_PCI_INTX_IRQ_INDEX => all.intx = None,
                _ => {}
            },
            IrqAction::Eventfds { index, start, fds } => {
                for f in fds.iter().flatten() {
                    set_nonblocking(f);
                }
                // QEMU sends one vector at a time as the guest unmasks them, or all at once.
                for (k, fd) in (start..).zip(fds) {
                    let slot = match index {
                        VFIO_PCI_MSIX_IRQ_INDEX => all.msix.get_mut(k as usize),
                        VFIO_PCI_MSI_IRQ_INDEX => Some(&mut all.msi),
                        VFIO_PCI_INTX_IRQ_INDEX => Some(&mut all.intx),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        *slot = fd;
                    }
                }
            }
            IrqAction::Trigger { .. } | IrqAction::Mask => {}
        }
        debug!(
            "interrupts: msix {:?} msi {} intx {}",
            all.msix.iter().map(Option::is_some).collect::<Vec<_>>(),
            all.msi.is_some(),
            all.intx.is_some()
        );
    }

    /// Forgets every descriptor (the client is gone).
    fn clear(&self) {
        let mut all = self.fds.write().unwrap();
        all.msix.iter_mut().for_each(|s| *s = None);
        all.msi = None;
        all.intx = None;
    }
}

fn set_nonblocking(f: &File) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own. (The flag is shared with the client's
    // copy; QEMU's interrupt eventfds are non-blocking already.)
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// The vfio-user backend: config space, BAR0, DMA mappings, interrupts, reset.
pub struct VfioDevice {
    /// The device model it serves.
    pub device: Device,
    config: ConfigSpace,
    maps: Arc<MapTable>,
    irqs: Arc<EventfdSink>,
    log: Arc<EventLog>,
    /// The command register's memory-space bit as last seen (for [`Event::Command`]).
    memory_space: std::sync::atomic::AtomicBool,
}

impl VfioDevice {
    /// Wraps `device`, whose memory and interrupts must be `maps` and `irqs`.
    pub fn new(
        device: Device,
        maps: Arc<MapTable>,
        irqs: Arc<EventfdSink>,
        log: Arc<EventLog>,
    ) -> Self {
        let vectors = device.vectors();
        irqs.fds.write().unwrap().msix = (0..vectors).map(|_| None).collect();
        let s = Self {
            device,
            config: ConfigSpace::new(vectors),
            maps,
            irqs,
            log,
            memory_space: std::sync::atomic::AtomicBool::new(false),
        };
        s.follow_command_register();
        s
    }

    /// Bus Master Enable as the command register now says, for the device and its interrupts.
    fn follow_command_register(&self) {
        let on = self.config.bus_master();
        let memory = self.config.memory_space();
        let was = (
            self.memory_space
                .swap(memory, std::sync::atomic::Ordering::SeqCst),
            self.irqs
                .bus_master
                .load(std::sync::atomic::Ordering::SeqCst),
        );
        if was != (memory, on) {
            self.log.record(|| Event::Command {
                memory,
                bus_master: on,
            });
        }
        if on != was.1 {
            info!(
                "PCI command register: bus mastering {}",
                if on { "on" } else { "off" }
            );
        }
        self.device.set_bus_master(on);
        self.irqs
            .bus_master
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Regions as announced to the client, by index.
    pub fn regions() -> Vec<RegionInfo> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = match index {
                    VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE as u64,
                    VFIO_PCI_BAR0_REGION_INDEX => abi::BAR0_SIZE as u64,
                    _ => 0,
                };
                RegionInfo {
                    size,
                    flags: if size != 0 {
                        REGION_FLAG_READ | REGION_FLAG_WRITE
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    /// Interrupt indexes as announced to the client, by index.
    pub fn irq_infos(vectors: u16) -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| {
                let count = match index {
                    VFIO_PCI_INTX_IRQ_INDEX | VFIO_PCI_MSI_IRQ_INDEX => 1,
                    VFIO_PCI_MSIX_IRQ_INDEX => u32::from(vectors),
                    _ => 0,
                };
                IrqInfo {
                    count,
                    flags: if count != 0 { IRQ_INFO_EVENTFD } else { 0 },
                }
            })
            .collect()
    }
}

impl Backend for VfioDevice {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.read(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX => self.device.mmio_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config.write(offset, data);
                // the oracle tells the device's registers apart by guest-physical address
                self.device.set_oracle_bar0(self.config.bar0());
                self.follow_command_register();
            }
            VFIO_PCI_BAR0_REGION_INDEX => self.device.mmio_write(offset, data),
            _ => {}
        }
    }

    fn dma_map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        writable: bool,
        fd: Option<File>,
    ) -> Result<(), Errno> {
        let result = match fd {
            // QEMU maps ROM and other non-RAM regions without a file descriptor. They are
            // recorded but not DMA-able: a DMA there is refused like one to unmapped memory.
            // Large ones are most likely RAM that was not made shareable, which the user must
            // hear about.
            None => {
                if size >= 1 << 20 {
                    warn!(
                        "DMA_MAP {address:#x}+{size:#x} came without a file descriptor: the device cannot DMA \
                         there (guest RAM must be shareable: -object memory-backend-memfd,share=on)"
                    );
                }
                self.maps.map_window(address, size)
            }
            Some(fd) => self.maps.map_file(address, size, fd, offset, writable),
        };
        if let Err(e) = result {
            error!("{e}");
            self.log.record(|| Event::Error {
                queue: None,
                tag: None,
                status: None,
                what: format!("vfio-user DMA_MAP refused: {e}"),
            });
            return Err(e.errno());
        }
        debug!(
            "DMA_MAP {address:#x}+{size:#x} offset {offset:#x} {}",
            if writable { "rw" } else { "ro" }
        );
        self.log.record(|| Event::Map {
            iova: address,
            size,
            mapped: true,
        });
        Ok(())
    }

    fn dma_unmap(&mut self, address: u64, size: u64, all: bool) -> Result<(), Errno> {
        // A driver bug the device can see: ring memory unmapped (freed) while the queue is still
        // enabled. "Unmap all" is the client tearing down, not the driver: not judged.
        if !all {
            for q in self.device.enabled_rings_in(address, size) {
                warn!("DMA_UNMAP {address:#x}+{size:#x} removes queue {q}'s ring while the queue is enabled");
                self.log.counters.ring_errors.fetch_add(1, Relaxed);
                self.log.record(|| Event::Error {
                    queue: Some(q),
                    tag: None,
                    status: None,
                    what: format!(
                        "{RING_UNMAPPED_WHILE_ENABLED}: DMA_UNMAP {address:#x}+{size:#x} removes queue {q}'s ring; the driver must reset the queue (or device) before freeing its rings"
                    ),
                });
            }
        }
        if all {
            self.maps.clear();
        } else {
            match self.maps.unmap(address, size) {
                Ok(n) => debug!("DMA_UNMAP {address:#x}+{size:#x}: {n} mapping(s) removed"),
                Err(e) => {
                    warn!("{e}");
                    self.log.record(|| Event::Error {
                        queue: None,
                        tag: None,
                        status: None,
                        what: format!("vfio-user DMA_UNMAP refused: {e}"),
                    });
                    return Err(libc::EINVAL);
                }
            }
        }
        self.log.record(|| Event::Map {
            iova: address,
            size,
            mapped: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        info!("device reset requested by the client");
        self.device.reset();
        self.config.reset();
        self.follow_command_register();
    }

    fn set_irqs(&mut self, action: IrqAction) -> Result<(), Errno> {
        debug!("SET_IRQS {action:?}");
        if let IrqAction::Trigger { index, subindexes } = &action {
            for &sub in subindexes {
                self.irqs.trigger(*index, sub);
            }
        }
        self.irqs.set(action);
        Ok(())
    }

    fn disconnected(&mut self) {
        // the client's guest is gone: nothing is owned any more
        self.device.release_windows();
        self.maps.clear();
        self.irqs.clear();
    }
}
