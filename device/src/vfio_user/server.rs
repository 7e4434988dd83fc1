//! The vfio-user server: message dispatch, rule by rule as `docs/interop/vfio-user.rst` states.
//!
//! Each command's payload is checked against the size its structure needs, `argsz` against the
//! spec's meaning, every count against the region and against [`MAX_DATA_XFER`], every flag
//! against the bits defined; whatever fails gets an error reply with the errno named below
//! (header only, as the spec requires) and the server goes on with the next message. Commands
//! sent with *No_reply* get no reply, errors included. The device behind it is a [`Backend`].

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use log::{debug, info, warn};

use super::conn::{Conn, ConnError, Message};
use super::proto::*;

/// An errno value for an error reply.
pub type Errno = i32;

/// Describes one region (`struct vfio_region_info` without capabilities).
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    /// Size in bytes.
    pub size: u64,
    /// `VFIO_REGION_INFO_FLAG_READ | _WRITE` (never MMAP: every access is a message).
    pub flags: u32,
}

/// Describes one interrupt index (`struct vfio_irq_info`).
#[derive(Debug, Clone, Copy)]
pub struct IrqInfo {
    /// Interrupts (vectors) in this index.
    pub count: u32,
    /// `VFIO_IRQ_INFO_*` flags ([`IRQ_INFO_EVENTFD`]).
    pub flags: u32,
}

/// A validated SET_IRQS request.
#[derive(Debug)]
pub enum IrqAction {
    /// Signal these eventfds for sub-indexes `start..start+fds.len()` (`None`: de-assign).
    Eventfds {
        /// The interrupt index (`VFIO_PCI_*_IRQ_INDEX`).
        index: u32,
        /// The first sub-index (vector) assigned.
        start: u32,
        /// One eventfd (or `None`) per sub-index from `start` on.
        fds: Vec<Option<File>>,
    },
    /// Disable every interrupt of `index` (count 0, DATA_NONE).
    DisableAll {
        /// The interrupt index.
        index: u32,
    },
    /// Trigger sub-indexes (DATA_NONE or DATA_BOOL with TRIGGER).
    Trigger {
        /// The interrupt index.
        index: u32,
        /// The sub-indexes (vectors) to raise.
        subindexes: Vec<u32>,
    },
    /// MASK/UNMASK: the client emulates masking; accepted and ignored.
    Mask,
}

/// The device side of the protocol. Regions and interrupt indexes are fixed and described
/// once, at [`Server::new`]; the methods below are called only with requests that passed
/// every check of the message layer.
pub trait Backend {
    /// REGION_READ of `data.len()` bytes at `offset`, which lies inside the region.
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]);
    /// REGION_WRITE of `data` at `offset`, which lies inside the region.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]);
    /// DMA_MAP: `address`, `size` and `offset` are page-aligned, `size > 0`, and the range does
    /// not wrap. Overlap with an existing mapping must fail with `EEXIST`.
    fn dma_map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        writable: bool,
        fd: Option<File>,
    ) -> Result<(), Errno>;
    /// DMA_UNMAP of `address..address+size` (`all`: every mapping). Must not return until no
    /// DMA into the removed memory can happen any more.
    fn dma_unmap(&mut self, address: u64, size: u64, all: bool) -> Result<(), Errno>;
    /// SET_IRQS, validated against the index's count; eventfds are checked to be eventfds.
    fn set_irqs(&mut self, action: IrqAction) -> Result<(), Errno>;
    /// DEVICE_RESET.
    fn reset(&mut self);
    /// The client is gone: drop its mappings and interrupt descriptors, keep the device state.
    fn disconnected(&mut self);
}

/// The server for one device.
pub struct Server {
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
}

/// What one message did to the connection.
enum Next {
    Continue,
    Close,
}

impl Server {
    /// A server for a device with these regions and interrupt indexes (fixed for its life).
    pub fn new(regions: Vec<RegionInfo>, irqs: Vec<IrqInfo>) -> Self {
        Self { regions, irqs }
    }

    /// Accepts one client on `listener` and serves it until it disconnects.
    pub fn serve_one(
        &self,
        listener: &UnixListener,
        backend: &mut dyn Backend,
    ) -> std::io::Result<()> {
        let (sock, _) = listener.accept()?;
        info!("vfio-user client connected");
        let r = self.serve(sock, backend);
        backend.disconnected();
        match r {
            Ok(()) => {
                info!("vfio-user client disconnected");
                Ok(())
            }
            Err(e) => {
                warn!("vfio-user connection dropped: {e}");
                Ok(())
            }
        }
    }

    /// Serves one connected client until it disconnects or breaks the protocol beyond repair.
    pub fn serve(&self, sock: UnixStream, backend: &mut dyn Backend) -> Result<(), ConnError> {
        let mut conn = Conn::new(sock)?;
        let mut negotiated = false;
        loop {
            let msg = match conn.recv() {
                Ok(m) => m,
                Err(ConnError::Closed) => return Ok(()),
                Err(ConnError::BadSize { id, command, size }) => {
                    // The payload cannot be skipped safely (or is absurd): say why and leave.
                    let h = Header {
                        id,
                        command,
                        size,
                        ..Header::default()
                    };
                    let errno = if size as usize >= HEADER_SIZE {
                        libc::E2BIG
                    } else {
                        libc::EINVAL
                    };
                    let _ = conn.send(&h.error_reply(errno), &[]);
                    return Err(ConnError::BadSize { id, command, size });
                }
                Err(e) => return Err(e),
            };
            let h = msg.header;
            if !h.is_command() {
                // We never send commands, so no reply is awaited: drop it.
                debug!("unexpected non-command message {h:?} ignored");
                continue;
            }
            let (reply, next) = self.handle(msg, &mut negotiated, backend);
            if h.wants_reply() {
                let (rh, payload) = match reply {
                    Ok(payload) => (h.reply(payload.len()), payload),
                    Err(errno) => (h.error_reply(errno), Vec::new()),
                };
                conn.send(&rh, &payload)?;
            } else if let Err(errno) = reply {
                debug!(
                    "command {} (no reply wanted) failed: errno {errno}",
                    h.command
                );
            }
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    fn handle(
        &self,
        msg: Message,
        negotiated: &mut bool,
        backend: &mut dyn Backend,
    ) -> (Result<Vec<u8>, Errno>, Next) {
        let h = msg.header;
        if msg.fds_truncated {
            return (Err(libc::EINVAL), Next::Continue);
        }
        if h.command == cmd::VERSION {
            if *negotiated {
                return (Err(libc::EINVAL), Next::Continue);
            }
            return match version(&msg.payload) {
                Ok(reply) if h.wants_reply() => {
                    *negotiated = true;
                    (Ok(reply), Next::Continue)
                }
                // Negotiation needs a reply: a VERSION without one cannot open a session.
                Ok(_) => (Err(libc::EINVAL), Next::Close),
                Err(errno) => (Err(errno), Next::Close),
            };
        }
        if !*negotiated {
            // "the initial client message is VFIO_USER_VERSION"
            return (Err(libc::EINVAL), Next::Continue);
        }
        let p = &msg.payload[..];
        let r = match h.command {
            cmd::DMA_MAP => self.dma_map(p, msg.fds, backend),
            cmd::DMA_UNMAP => dma_unmap(p, backend),
            cmd::DEVICE_GET_INFO => self.device_info(p),
            cmd::DEVICE_GET_REGION_INFO => self.region_info(p),
            cmd::DEVICE_GET_REGION_IO_FDS => self.region_io_fds(p),
            cmd::DEVICE_GET_IRQ_INFO => self.irq_info(p),
            cmd::DEVICE_SET_IRQS => self.set_irqs(p, msg.fds, backend),
            cmd::REGION_READ => self.region_read(p, backend),
            cmd::REGION_WRITE => self.region_write(p, backend),
            cmd::DEVICE_RESET => {
                backend.reset();
                Ok(Vec::new())
            }
            // DMA_READ/WRITE go server -> client; the rest are capabilities we do not announce.
            cmd::DMA_READ
            | cmd::DMA_WRITE
            | cmd::REGION_WRITE_MULTI
            | cmd::DEVICE_FEATURE
            | cmd::MIG_DATA_READ
            | cmd::MIG_DATA_WRITE => Err(libc::ENOTSUP),
            _ => Err(libc::ENOSYS),
        };
        (r, Next::Continue)
    }

    fn dma_map(
        &self,
        p: &[u8],
        mut fds: Vec<OwnedFd>,
        backend: &mut dyn Backend,
    ) -> Result<Vec<u8>, Errno> {
        let m = DmaMap::decode(p).ok_or(libc::EINVAL)?;
        if p.len() != DmaMap::SIZE || m.argsz as usize != DmaMap::SIZE || fds.len() > 1 {
            return Err(libc::EINVAL);
        }
        if m.flags & !(DMA_MAP_READ | DMA_MAP_WRITE) != 0 {
            return Err(libc::EINVAL);
        }
        if m.size == 0
            || m.address.checked_add(m.size).is_none()
            || m.offset.checked_add(m.size).is_none()
            || !m.address.is_multiple_of(PAGE_SIZE)
            || !m.size.is_multiple_of(PAGE_SIZE)
            || !m.offset.is_multiple_of(PAGE_SIZE)
        {
            return Err(libc::EINVAL);
        }
        let fd = fds.pop().map(File::from);
        backend.dma_map(
            m.address,
            m.size,
            m.offset,
            m.flags & DMA_MAP_WRITE != 0,
            fd,
        )?;
        Ok(Vec::new())
    }

    fn device_info(&self, p: &[u8]) -> Result<Vec<u8>, Errno> {
        const SIZE: u32 = 16;
        if p.len() < SIZE as usize {
            return Err(libc::EINVAL);
        }
        let argsz = Reader::new(p).u32();
        if argsz < SIZE {
            return Err(libc::EINVAL);
        }
        let mut w = Vec::new();
        put32(&mut w, SIZE);
        put32(&mut w, DEVICE_FLAGS_RESET | DEVICE_FLAGS_PCI);
        put32(&mut w, self.regions.len() as u32);
        put32(&mut w, self.irqs.len() as u32);
        Ok(w)
    }

    fn region_info(&self, p: &[u8]) -> Result<Vec<u8>, Errno> {
        const SIZE: u32 = 32;
        if p.len() < SIZE as usize {
            return Err(libc::EINVAL);
        }
        let mut r = Reader::new(p);
        let (argsz, _flags, index) = (r.u32(), r.u32(), r.u32());
        let region = self.regions.get(index as usize).ok_or(libc::EINVAL)?;
        if argsz < SIZE {
            return Err(libc::EINVAL);
        }
        let mut w = Vec::new();
        put32(&mut w, SIZE);
        put32(&mut w, region.flags);
        put32(&mut w, index);
        put32(&mut w, 0); // cap_offset: no capabilities
        put64(&mut w, region.size);
        put64(&mut w, 0); // offset: nothing is mmap-able
        Ok(w)
    }

    fn region_io_fds(&self, p: &[u8]) -> Result<Vec<u8>, Errno> {
        if p.len() < 16 {
            return Err(libc::EINVAL);
        }
        let mut r = Reader::new(p);
        let (_argsz, _flags, index) = (r.u32(), r.u32(), r.u32());
        if index as usize >= self.regions.len() {
            return Err(libc::EINVAL);
        }
        // No region offers ioeventfds: every access goes through REGION_READ/WRITE.
        Err(libc::ENOTSUP)
    }

    fn irq_info(&self, p: &[u8]) -> Result<Vec<u8>, Errno> {
        const SIZE: u32 = 16;
        if p.len() < SIZE as usize {
            return Err(libc::EINVAL);
        }
        let mut r = Reader::new(p);
        let (argsz, _flags, index) = (r.u32(), r.u32(), r.u32());
        let irq = self.irqs.get(index as usize).ok_or(libc::EINVAL)?;
        if argsz < SIZE {
            return Err(libc::EINVAL);
        }
        let mut w = Vec::new();
        put32(&mut w, SIZE);
        put32(&mut w, irq.flags);
        put32(&mut w, index);
        put32(&mut w, irq.count);
        Ok(w)
    }

    fn set_irqs(
        &self,
        p: &[u8],
        fds: Vec<OwnedFd>,
        backend: &mut dyn Backend,
    ) -> Result<Vec<u8>, Errno> {
        let s = IrqSet::decode(p).ok_or(libc::EINVAL)?;
        if s.argsz as usize != p.len() {
            return Err(libc::EINVAL);
        }
        let data = s.flags & IRQ_SET_DATA_MASK;
        let action = s.flags & IRQ_SET_ACTION_MASK_ALL;
        if s.flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(libc::EINVAL);
        }
        let irq = self.irqs.get(s.index as usize).ok_or(libc::EINVAL)?;
        let extra = &p[IrqSet::SIZE..];
        if data != IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(libc::EINVAL);
        }
        if data == IRQ_SET_DATA_NONE && s.count == 0 && s.start == 0 && extra.is_empty() {
            if action != IRQ_SET_ACTION_TRIGGER {
                return Ok(Vec::new());
            }
            backend.set_irqs(IrqAction::DisableAll { index: s.index })?;
            return Ok(Vec::new());
        }
        let end = s.start.checked_add(s.count).ok_or(libc::EINVAL)?;
        if s.count == 0 || end > irq.count {
            return Err(libc::EINVAL);
        }
        let act = match data {
            IRQ_SET_DATA_NONE if extra.is_empty() => match action {
                IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger {
                    index: s.index,
                    subindexes: (s.start..end).collect(),
                },
                _ => IrqAction::Mask,
            },
            IRQ_SET_DATA_BOOL if extra.len() == s.count as usize => {
                if extra.iter().any(|&b| b > 1) {
                    return Err(libc::EINVAL);
                }
                match action {
                    IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger {
                        index: s.index,
                        subindexes: (s.start..end)
                            .zip(extra)
                            .filter(|(_, &b)| b == 1)
                            .map(|(i, _)| i)
                            .collect(),
                    },
                    _ => IrqAction::Mask,
                }
            }
            // "If no file descriptors are provided, this de-assigns the specified interrupts."
            IRQ_SET_DATA_EVENTFD if extra.is_empty() && action == IRQ_SET_ACTION_TRIGGER => {
                let fds: Vec<Option<File>> = if fds.is_empty() {
                    (0..s.count).map(|_| None).collect()
                } else if fds.len() == s.count as usize {
                    let files: Vec<File> = fds.into_iter().map(File::from).collect();
                    if !files.iter().all(is_eventfd) {
                        return Err(libc::EINVAL);
                    }
                    files.into_iter().map(Some).collect()
                } else {
                    return Err(libc::EINVAL);
                };
                IrqAction::Eventfds {
                    index: s.index,
                    start: s.start,
                    fds,
                }
            }
            // Mask/unmask notification eventfds: the device never masks on its own.
            IRQ_SET_DATA_EVENTFD if extra.is_empty() => return Err(libc::ENOTSUP),
            _ => return Err(libc::EINVAL),
        };
        backend.set_irqs(act)?;
        Ok(Vec::new())
    }

    /// Checks a region access: the region exists and allows it, the count is within the
    /// transfer limit, and `offset + count` lies inside the region.
    fn check_access(&self, a: &RegionAccess, flag: u32) -> Result<(), Errno> {
        let region = self.regions.get(a.region as usize).ok_or(libc::EINVAL)?;
        if region.flags & flag == 0 || a.count == 0 || a.count > MAX_DATA_XFER {
            return Err(libc::EINVAL);
        }
        match a.offset.checked_add(u64::from(a.count)) {
            Some(end) if end <= region.size => Ok(()),
            _ => Err(libc::EINVAL),
        }
    }

    fn region_read(&self, p: &[u8], backend: &mut dyn Backend) -> Result<Vec<u8>, Errno> {
        let a = RegionAccess::decode(p).ok_or(libc::EINVAL)?;
        if p.len() != RegionAccess::SIZE {
            return Err(libc::EINVAL);
        }
        self.check_access(&a, REGION_FLAG_READ)?;
        let mut w = Vec::with_capacity(RegionAccess::SIZE + a.count as usize);
        a.encode(&mut w);
        w.resize(RegionAccess::SIZE + a.count as usize, 0);
        backend.region_read(a.region, a.offset, &mut w[RegionAccess::SIZE..]);
        Ok(w)
    }

    fn region_write(&self, p: &[u8], backend: &mut dyn Backend) -> Result<Vec<u8>, Errno> {
        let a = RegionAccess::decode(p).ok_or(libc::EINVAL)?;
        // The message size is the truth; a count that disagrees with it is refused.
        if p.len() - RegionAccess::SIZE != a.count as usize {
            return Err(libc::EINVAL);
        }
        self.check_access(&a, REGION_FLAG_WRITE)?;
        backend.region_write(a.region, a.offset, &p[RegionAccess::SIZE..]);
        let mut w = Vec::with_capacity(RegionAccess::SIZE);
        a.encode(&mut w);
        Ok(w)
    }
}

/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_EVENTFD`.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;

fn dma_unmap(p: &[u8], backend: &mut dyn Backend) -> Result<Vec<u8>, Errno> {
    let u = DmaUnmap::decode(p).ok_or(libc::EINVAL)?;
    if p.len() != DmaUnmap::SIZE || (u.argsz as usize) < DmaUnmap::SIZE {
        return Err(libc::EINVAL);
    }
    if u.flags & DMA_UNMAP_GET_DIRTY_BITMAP != 0 {
        // Dirty tracking belongs to migration, which we do not announce.
        return Err(libc::ENOTSUP);
    }
    if u.flags & !DMA_UNMAP_ALL != 0 {
        return Err(libc::EINVAL);
    }
    let all = u.flags & DMA_UNMAP_ALL != 0;
    if all {
        // As in <linux/vfio.h>: "unmap all" comes with iova and size 0.
        if u.address != 0 || u.size != 0 {
            return Err(libc::EINVAL);
        }
    } else if u.size == 0 || u.address.checked_add(u.size - 1).is_none() {
        return Err(libc::EINVAL);
    }
    backend.dma_unmap(u.address, u.size, all)?;
    // "The server responds with the original DMA entry in the request."
    let mut reply = u;
    reply.argsz = DmaUnmap::SIZE as u32;
    Ok(reply.encode())
}

/// True when `f` is an eventfd (interrupt descriptors must be: a pipe or a file could block
/// or grow without bound when signalled).
fn is_eventfd(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// VERSION: checks the proposal and builds the reply (our version and the capabilities, a
/// subset of those proposed).
fn version(p: &[u8]) -> Result<Vec<u8>, Errno> {
    if p.len() < 4 {
        return Err(libc::EINVAL);
    }
    let mut r = Reader::new(p);
    // The proposed minor needs no check: we answer 0, which every 0.x client speaks.
    let major = r.u16();
    if major != VERSION_MAJOR {
        // "If the client does not support the proposed major, it closes the connection":
        // the server cannot offer another major either, so it refuses and closes.
        return Err(libc::ENOTSUP);
    }
    let data = &p[4..];
    let proposed = if data.is_empty() {
        serde_json::Map::new()
    } else {
        // "version data ... (including terminating NUL)"
        let Some((&0, json)) = data.split_last() else {
            return Err(libc::EINVAL);
        };
        if json.len() > MAX_VERSION_DATA || json.contains(&0) {
            return Err(libc::EINVAL);
        }
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|_| libc::EINVAL)?;
        match v {
            serde_json::Value::Object(mut o) => match o.remove("capabilities") {
                None => serde_json::Map::new(),
                Some(serde_json::Value::Object(c)) => c,
                Some(_) => return Err(libc::EINVAL),
            },
            _ => return Err(libc::EINVAL),
        }
    };
    let mut caps = serde_json::Map::new();
    for (name, ours) in [
        ("max_msg_fds", MAX_MSG_FDS as u64),
        ("max_data_xfer_size", u64::from(MAX_DATA_XFER)),
        ("pgsizes", PAGE_SIZE),
        ("max_dma_maps", MAX_DMA_MAPS as u64),
    ] {
        match proposed.get(name) {
            None => {}
            Some(v) if v.as_u64().is_some() => {
                if name == "pgsizes" && v.as_u64().unwrap() & PAGE_SIZE == 0 {
                    // The client cannot map 4 KiB pages, the only size we take.
                    return Err(libc::ENOTSUP);
                }
                caps.insert(name.into(), ours.into());
            }
            Some(_) => return Err(libc::EINVAL),
        }
    }
    // migration, twin_socket and write_multiple are not offered: leaving them out of the reply
    // is how the spec says "not supported".
    let json = serde_json::json!({ "capabilities": caps }).to_string();
    let mut w = Vec::with_capacity(5 + json.len());
    put16(&mut w, VERSION_MAJOR);
    // "The minor version in the reply must be equal to or less than the minor version proposed."
    put16(&mut w, VERSION_MINOR);
    w.extend_from_slice(json.as_bytes());
    w.push(0);
    Ok(w)
}
