//! The vfio-user wire format (QEMU `docs/interop/vfio-user.rst`): the message header, command
//! numbers, flag bits and the fixed-size payload structures, decoded from and encoded to
//! little-endian bytes without ever trusting a length the peer wrote.

/// Size of the header in front of every message.
pub const HEADER_SIZE: usize = 16;

/// The protocol version we speak (QEMU 10.2's client proposes 0.0).
pub const VERSION_MAJOR: u16 = 0;
pub const VERSION_MINOR: u16 = 0;

/// Largest `count` of one REGION_READ/WRITE; announced as `max_data_xfer_size`.
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// File descriptors we accept with one message; announced as `max_msg_fds` (QEMU's maximum).
pub const MAX_MSG_FDS: usize = 16;
/// Simultaneous DMA mappings; announced as `max_dma_maps` (the spec's default).
pub const MAX_DMA_MAPS: usize = 65535;
/// The only page size DMA mappings may use; announced as `pgsizes`.
pub const PAGE_SIZE: u64 = 4096;
/// Largest message accepted: a REGION_WRITE of `MAX_DATA_XFER` bytes plus its headers. Anything
/// larger cannot be a valid request, and the connection is closed rather than read into memory.
pub const MAX_MESSAGE: u32 = HEADER_SIZE as u32 + 16 + MAX_DATA_XFER;
/// Largest version data (the JSON capabilities) accepted.
pub const MAX_VERSION_DATA: usize = 64 << 10;

/// Command numbers.
pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
    pub const REGION_WRITE_MULTI: u16 = 15;
    pub const DEVICE_FEATURE: u16 = 16;
    pub const MIG_DATA_READ: u16 = 17;
    pub const MIG_DATA_WRITE: u16 = 18;
}

/// Header flag bits.
pub mod flags {
    /// Bits 0-3: the message type.
    pub const TYPE_MASK: u32 = 0xf;
    pub const TYPE_COMMAND: u32 = 0;
    pub const TYPE_REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// A reply reporting an error; the header's error field holds the errno.
    pub const ERROR: u32 = 1 << 5;
}

/// DMA_MAP flags (`VFIO_DMA_MAP_FLAG_*` of `<linux/vfio.h>`).
pub const DMA_MAP_READ: u32 = 1 << 0;
pub const DMA_MAP_WRITE: u32 = 1 << 1;
/// DMA_UNMAP flags (`VFIO_DMA_UNMAP_FLAG_*` of `<linux/vfio.h>`).
pub const DMA_UNMAP_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const DMA_UNMAP_ALL: u32 = 1 << 1;

/// `vfio_device_info.flags`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// SET_IRQS flags (`VFIO_IRQ_SET_*`).
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const IRQ_SET_DATA_MASK: u32 = 0x7;
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub const IRQ_SET_ACTION_MASK_ALL: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// The 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    /// Whole message, header included.
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        let mut r = Reader::new(b);
        Self {
            id: r.u16(),
            command: r.u16(),
            size: r.u32(),
            flags: r.u32(),
            error: r.u32(),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut w = Vec::with_capacity(HEADER_SIZE);
        put16(&mut w, self.id);
        put16(&mut w, self.command);
        put32(&mut w, self.size);
        put32(&mut w, self.flags);
        put32(&mut w, self.error);
        w.try_into().expect("16 bytes")
    }

    pub fn is_command(&self) -> bool {
        self.flags & flags::TYPE_MASK == flags::TYPE_COMMAND
    }

    pub fn wants_reply(&self) -> bool {
        self.flags & flags::NO_REPLY == 0
    }

    /// The reply header to this command, for a payload of `payload` bytes.
    pub fn reply(&self, payload: usize) -> Self {
        Self {
            id: self.id,
            command: self.command,
            size: (HEADER_SIZE + payload) as u32,
            flags: flags::TYPE_REPLY,
            error: 0,
        }
    }

    /// The error reply to this command (header only, as the spec requires).
    pub fn error_reply(&self, errno: i32) -> Self {
        Self {
            id: self.id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: errno as u32,
        }
    }
}

/// Reads little-endian fields from a payload the caller has already checked is long enough.
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let v = self.b[self.at..self.at + N].try_into().expect("length");
        self.at += N;
        v
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

pub fn put16(w: &mut Vec<u8>, v: u16) {
    w.extend_from_slice(&v.to_le_bytes());
}

pub fn put32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

pub fn put64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

/// DMA_MAP payload (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub offset: u64,
    pub address: u64,
    pub size: u64,
}

impl DmaMap {
    pub const SIZE: usize = 32;

    pub fn decode(p: &[u8]) -> Option<Self> {
        (p.len() >= Self::SIZE).then(|| {
            let mut r = Reader::new(p);
            Self {
                argsz: r.u32(),
                flags: r.u32(),
                offset: r.u64(),
                address: r.u64(),
                size: r.u64(),
            }
        })
    }
}

/// DMA_UNMAP payload (24 bytes; a dirty bitmap may follow, which we do not support).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub address: u64,
    pub size: u64,
}

impl DmaUnmap {
    pub const SIZE: usize = 24;

    pub fn decode(p: &[u8]) -> Option<Self> {
        (p.len() >= Self::SIZE).then(|| {
            let mut r = Reader::new(p);
            Self {
                argsz: r.u32(),
                flags: r.u32(),
                address: r.u64(),
                size: r.u64(),
            }
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(Self::SIZE);
        put32(&mut w, self.argsz);
        put32(&mut w, self.flags);
        put64(&mut w, self.address);
        put64(&mut w, self.size);
        w
    }
}

/// SET_IRQS fixed part (20 bytes); `count` booleans follow for DATA_BOOL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSet {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

impl IrqSet {
    pub const SIZE: usize = 20;

    pub fn decode(p: &[u8]) -> Option<Self> {
        (p.len() >= Self::SIZE).then(|| {
            let mut r = Reader::new(p);
            Self {
                argsz: r.u32(),
                flags: r.u32(),
                index: r.u32(),
                start: r.u32(),
                count: r.u32(),
            }
        })
    }
}

/// REGION_READ/REGION_WRITE fixed part (16 bytes); data follows for a write and in a read reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccess {
    pub const SIZE: usize = 16;

    pub fn decode(p: &[u8]) -> Option<Self> {
        (p.len() >= Self::SIZE).then(|| {
            let mut r = Reader::new(p);
            Self {
                offset: r.u64(),
                region: r.u32(),
                count: r.u32(),
            }
        })
    }

    pub fn encode(&self, w: &mut Vec<u8>) {
        put64(w, self.offset);
        put32(w, self.region);
        put32(w, self.count);
    }
}
