//! Serving the device to QEMU over vfio-user (the crates.io `vfio_user` server loop).
//!
//! The server loop is single-threaded and owns config space and the DMA map table; BAR0 writes
//! reach the device model, which hands work to its queue workers. Workers touch guest memory
//! through the memfd mappings directly and never message the client, so a register access can
//! never deadlock against a DMA.

use std::fs::File;
use std::io::Write;
use std::mem::size_of;
use std::sync::{Arc, RwLock};

use log::{debug, error, info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};

use crate::device::Device;
use crate::eventlog::{Event, EventLog};
use crate::interrupts::InterruptSink;
use crate::memory::MapTable;
use crate::pci_config::{ConfigSpace, CONFIG_SIZE};
use dmalab_abi as abi;

/// Interrupt eventfds handed over by SET_IRQS.
#[derive(Default)]
struct Fds {
    msix: Vec<Option<File>>,
    msi: Option<File>,
    intx: Option<File>,
}

/// Delivers interrupts through the client's eventfds: MSI-X vector v if the client gave one,
/// else the single MSI vector, else INTx.
#[derive(Default)]
pub struct EventfdSink {
    fds: RwLock<Fds>,
}

impl InterruptSink for EventfdSink {
    fn raise(&self, vector: u16) -> bool {
        let fds = self.fds.read().unwrap();
        let target = fds
            .msix
            .get(vector as usize)
            .and_then(Option::as_ref)
            .or(fds.msi.as_ref())
            .or(fds.intx.as_ref());
        match target {
            // An eventfd write only fails if the counter would overflow, which merges with the
            // pending interrupt anyway.
            Some(mut f) => f.write_all(&1u64.to_le_bytes()).is_ok(),
            None => false,
        }
    }
}

impl EventfdSink {
    fn set(&self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) {
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER == 0 {
            // MASK/UNMASK: the client emulates masking (MSI-X table, INTx EOI) itself.
            return;
        }
        let mut all = self.fds.write().unwrap();
        let disable = flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0;
        let eventfds = flags & VFIO_IRQ_SET_DATA_EVENTFD != 0;
        match index {
            VFIO_PCI_MSIX_IRQ_INDEX if disable => all.msix.iter_mut().for_each(|s| *s = None),
            VFIO_PCI_MSIX_IRQ_INDEX if eventfds => {
                // QEMU sends one vector at a time as the guest unmasks them, or all at once.
                let mut it = fds.into_iter();
                for k in start..start.saturating_add(count) {
                    if let Some(slot) = all.msix.get_mut(k as usize) {
                        *slot = it.next();
                    }
                }
            }
            VFIO_PCI_MSI_IRQ_INDEX if disable => all.msi = None,
            VFIO_PCI_MSI_IRQ_INDEX if eventfds => all.msi = fds.into_iter().next(),
            VFIO_PCI_INTX_IRQ_INDEX if disable => all.intx = None,
            VFIO_PCI_INTX_IRQ_INDEX if eventfds => all.intx = fds.into_iter().next(),
            _ => {}
        }
        debug!(
            "interrupts: msix {:?} msi {} intx {}",
            all.msix.iter().map(Option::is_some).collect::<Vec<_>>(),
            all.msi.is_some(),
            all.intx.is_some()
        );
    }
}

/// The vfio-user backend: config space, BAR0, DMA mappings, interrupts, reset.
pub struct VfioDevice {
    pub device: Device,
    config: ConfigSpace,
    maps: Arc<MapTable>,
    irqs: Arc<EventfdSink>,
    log: Arc<EventLog>,
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
        Self {
            device,
            config: ConfigSpace::new(vectors),
            maps,
            irqs,
            log,
        }
    }

    /// Regions as announced to the client.
    pub fn regions() -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = match index {
                    VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE as u64,
                    VFIO_PCI_BAR0_REGION_INDEX => abi::BAR0_SIZE as u64,
                    _ => 0,
                };
                let flags = if size != 0 {
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                } else {
                    0
                };
                let region_info = vfio_region_info {
                    argsz: size_of::<vfio_region_info>() as u32,
                    index,
                    size,
                    flags,
                    ..Default::default()
                };
                ServerRegion {
                    region_info,
                    sparse_areas: Vec::new(),
                    mmap_fd: None,
                }
            })
            .collect()
    }

    /// Interrupt indexes as announced to the client.
    pub fn irq_infos(vectors: u16) -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| {
                let count = match index {
                    VFIO_PCI_INTX_IRQ_INDEX | VFIO_PCI_MSI_IRQ_INDEX => 1,
                    VFIO_PCI_MSIX_IRQ_INDEX => u32::from(vectors),
                    _ => 0,
                };
                IrqInfo {
                    index,
                    count,
                    flags: if count != 0 { VFIO_IRQ_INFO_EVENTFD } else { 0 },
                }
            })
            .collect()
    }
}

impl ServerBackend for VfioDevice {
    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), std::io::Error> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.read(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX => self.device.mmio_read(offset, data),
            _ => {
                warn!("read of region {region} which does not exist");
                data.fill(0xff);
            }
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), std::io::Error> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.write(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX => self.device.mmio_write(offset, data),
            _ => warn!("write to region {region} which does not exist"),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> Result<(), std::io::Error> {
        let Some(fd) = fd else {
            // QEMU maps ROM and other non-RAM regions without a file descriptor. They stay out
            // of the table: a DMA there is refused like one to unmapped memory. Large ones are
            // most likely RAM that was not made shareable, which the user must hear about.
            if size >= 1 << 20 {
                warn!(
                    "DMA_MAP {address:#x}+{size:#x} came without a file descriptor: the device cannot DMA \
                     there (guest RAM must be shareable: -object memory-backend-memfd,share=on)"
                );
            } else {
                debug!(
                    "DMA_MAP {address:#x}+{size:#x} without a file descriptor (ROM?): not DMA-able"
                );
            }
            return Ok(());
        };
        let writable = flags.contains(DmaMapFlags::WRITE);
        self.maps
            .map_file(address, size, fd, offset, writable)
            .map_err(|e| {
                error!("{e}");
                std::io::Error::other(e.to_string())
            })?;
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

    fn dma_unmap(
        &mut self,
        flags: DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> Result<(), std::io::Error> {
        if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            self.maps.clear();
        } else {
            let n = self.maps.unmap(address, size);
            debug!("DMA_UNMAP {address:#x}+{size:#x}: {n} mapping(s) removed");
        }
        self.log.record(|| Event::Map {
            iova: address,
            size,
            mapped: false,
        });
        Ok(())
    }

    fn reset(&mut self) -> Result<(), std::io::Error> {
        info!("device reset requested by the client");
        self.device.reset();
        self.config.reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), std::io::Error> {
        debug!(
            "SET_IRQS index {index} flags {flags:#x} start {start} count {count} fds {}",
            fds.len()
        );
        self.irqs.set(index, flags, start, count, fds);
        Ok(())
    }
}
