// SPDX-License-Identifier: GPL-2.0 OR MIT
// dmalab device ABI: BAR0 registers, descriptor/completion formats, status codes, and the
// /dev/dmalabN ioctl interface. docs/datasheet.md is the prose version of this file.
//
// This one file is compiled into the device model (std), the guest agent (std) and the guest
// kernel module (no_std, `include!`d). Rules: only `core::`, no inner attributes, no macros from
// other crates (except serde derives behind the host-only `serde` feature, which the kernel
// build never sets); only consts, `#[repr(C)]` types, `const fn`s and the `bar0_registers!`
// table; a doc comment on every item (the kernel builds with -Wmissing_docs).

/// PCI vendor ID (Red Hat, Inc., QEMU's range for emulated test devices).
pub const PCI_VENDOR_ID: u16 = 0x1b36;
/// PCI device ID of the dmalab device.
pub const PCI_DEVICE_ID: u16 = 0x00f1;
/// PCI subsystem vendor ID.
pub const PCI_SUBSYS_VENDOR_ID: u16 = 0x1b36;
/// PCI subsystem ID.
pub const PCI_SUBSYS_ID: u16 = 0x0d4a;
/// PCI class code (class 0xff "unassigned", subclass 0xff, prog-if 0).
pub const PCI_CLASS: u32 = 0xff_ff00;
/// PCI revision ID.
pub const PCI_REVISION: u8 = 1;

/// Size of BAR0: registers, queue blocks, MSI-X table and PBA.
pub const BAR0_SIZE: usize = 0x2000;

/// Value of [`REG_ID`]: ASCII "DMAL" read as a little-endian u32.
pub const DEVICE_MAGIC: u32 = 0x4c41_4d44;
/// Major version of this programming interface (incompatible changes).
pub const VERSION_MAJOR: u16 = 1;
/// Minor version of this programming interface (compatible additions).
pub const VERSION_MINOR: u16 = 0;
/// Value of [`REG_VERSION`].
pub const VERSION: u32 = ((VERSION_MAJOR as u32) << 16) | VERSION_MINOR as u32;

/// RO: [`DEVICE_MAGIC`].
pub const REG_ID: usize = 0x000;
/// RO: interface version, major << 16 | minor ([`VERSION`]).
pub const REG_VERSION: usize = 0x004;
/// RO: number of queue pairs this instance has (1..=[`MAX_QUEUES`]).
pub const REG_CAP_QUEUES: usize = 0x008;
/// RO: largest ring size in entries (a power of two, [`MAX_RING_ENTRIES`]).
pub const REG_CAP_RING: usize = 0x00c;
/// RO: largest number of scatter-gather segments per list ([`MAX_SG_SEGMENTS`]).
pub const REG_CAP_SG: usize = 0x010;
/// RO: bit n set = opcode n supported ([`SUPPORTED_OPCODES`]).
pub const REG_CAP_OPCODES: usize = 0x014;
/// RO: size of the internal memory in bytes, low 32 bits.
pub const REG_MEM_SIZE_LO: usize = 0x018;
/// RO: size of the internal memory in bytes, high 32 bits.
pub const REG_MEM_SIZE_HI: usize = 0x01c;
/// WO (reads 0): device control ([`CTRL_RESET`]).
pub const REG_DEV_CTRL: usize = 0x020;
/// RO: device status ([`STATUS_READY`], [`STATUS_FATAL`]).
pub const REG_DEV_STATUS: usize = 0x024;
/// RW1C: sticky device error bits ([`ERR_RING_FETCH`] ...); raises the error vector when set.
pub const REG_ERROR: usize = 0x028;
/// RW: interrupt coalescing: bits 15:0 completion count, bits 31:16 time in microseconds.
pub const REG_IRQ_COALESCE: usize = 0x02c;
/// RW1C: INTx/MSI interrupt cause: bit q = queue q has new completions, bit 31 = device error.
pub const REG_IRQ_CAUSE: usize = 0x030;
/// RO: largest transfer length per descriptor in bytes ([`MAX_TRANSFER`]).
pub const REG_CAP_MAX_XFER: usize = 0x034;
/// RO: how many address bits the device drives on the bus, [`MIN_DMA_BITS`]..=64 (64 unless
/// the instance was configured with fewer, `--dma-bits`). A descriptor, SG list or ring that
/// names an address at or above 2^bits is refused ([`CS_ADDR_WIDTH`]); a driver sets its DMA
/// mask to this width.
pub const REG_CAP_DMA_BITS: usize = 0x038;
/// Fewest address bits a device instance can be configured with.
pub const MIN_DMA_BITS: u32 = 32;

/// RW: direct transfer source, bits 31:0: a guest bus address, or an internal-memory offset
/// (by opcode, as a descriptor's `src`). The direct block is edu-style DMA: one transfer at a
/// time, started by a register write and polled for, no rings, no interrupt.
pub const REG_DMA_SRC_LO: usize = 0x040;
/// RW: direct transfer source, bits 63:32.
pub const REG_DMA_SRC_HI: usize = 0x044;
/// RW: direct transfer destination, bits 31:0 (as a descriptor's `dst`).
pub const REG_DMA_DST_LO: usize = 0x048;
/// RW: direct transfer destination, bits 63:32.
pub const REG_DMA_DST_HI: usize = 0x04c;
/// RW: direct transfer length in bytes (1..=[`MAX_TRANSFER`]).
pub const REG_DMA_LEN: usize = 0x050;
/// RW: direct transfer FILL pattern (0 for other opcodes).
pub const REG_DMA_PATTERN: usize = 0x054;
/// WO (reads 0): bits 7:0 an `OP_*` opcode; the write starts the transfer. Bits 31:8 reserved.
pub const REG_DMA_CMD: usize = 0x058;
/// RO: direct transfer status ([`DMA_STATUS_BUSY`], [`DMA_STATUS_DONE`], bits 31:16 a `CS_*`
/// code once done).
pub const REG_DMA_STATUS: usize = 0x05c;
/// RO: the finished transfer's result (the CRC32C for [`OP_CHECKSUM`], else 0).
pub const REG_DMA_RESULT: usize = 0x060;
/// RO: bytes the finished transfer moved.
pub const REG_DMA_BYTES: usize = 0x064;
/// RW: fault-injection epoch, for test harnesses (no driver needs it). Writing `e` restarts the
/// fault injector as if its rules had just been loaded with a seed made from the rules' seed and
/// `e`: rule counters and every queue's random stream start afresh, so a campaign's unit `e`
/// meets the same faults in whichever VM, shard or order it runs. Reads the last epoch written.
pub const REG_FAULT_EPOCH: usize = 0x068;

/// [`REG_DMA_STATUS`] bit 0: a transfer is running; its registers refuse writes.
pub const DMA_STATUS_BUSY: u32 = 1 << 0;
/// [`REG_DMA_STATUS`] bit 1: the last transfer finished; bits 31:16 hold its `CS_*` status.
pub const DMA_STATUS_DONE: u32 = 1 << 1;
/// [`REG_DMA_STATUS`]: shift of the `CS_*` status code.
pub const DMA_STATUS_CODE_SHIFT: u32 = 16;
/// The direct block's number where a queue's would be: in the event log's `queue` fields and in
/// fault rules (`queue = 8`).
pub const DIRECT_QUEUE: u16 = MAX_QUEUES as u16;

/// [`REG_DEV_CTRL`] bit 0: write 1 to reset the whole device; reads back 0 once done.
pub const CTRL_RESET: u32 = 1 << 0;
/// [`REG_DEV_STATUS`] bit 0: the device is out of reset and accepts work.
pub const STATUS_READY: u32 = 1 << 0;
/// [`REG_DEV_STATUS`] bit 1: fatal error; every queue is halted until a device reset.
pub const STATUS_FATAL: u32 = 1 << 1;

/// [`REG_ERROR`] bit 0: a submission-ring entry could not be read (unmapped ring memory).
pub const ERR_RING_FETCH: u32 = 1 << 0;
/// [`REG_ERROR`] bit 1: a completion could not be written (unmapped ring memory).
pub const ERR_CQ_WRITE: u32 = 1 << 1;
/// [`REG_ERROR`] bit 2: a doorbell or ring register was written with an invalid value.
pub const ERR_BAD_DOORBELL: u32 = 1 << 2;
/// [`REG_ERROR`] bit 3: a DMA named memory outside the device's DMA mappings.
pub const ERR_DMA_VIOLATION: u32 = 1 << 3;
/// [`REG_ERROR`] bit 4: fatal internal error (see [`STATUS_FATAL`]).
pub const ERR_FATAL: u32 = 1 << 4;

/// Number of queue pairs the device supports at most.
pub const MAX_QUEUES: usize = 8;
/// Largest ring size in entries.
pub const MAX_RING_ENTRIES: u32 = 4096;
/// Largest number of segments in one scatter-gather list.
pub const MAX_SG_SEGMENTS: u32 = 256;
/// Largest transfer per descriptor in bytes (64 MiB).
pub const MAX_TRANSFER: u32 = 64 << 20;

/// Offset of queue pair 0's register block; queue q is at `QUEUE_BASE + q * QUEUE_STRIDE`.
pub const QUEUE_BASE: usize = 0x100;
/// Size of one queue pair's register block.
pub const QUEUE_STRIDE: usize = 0x40;
/// Queue register: RW, submission ring base address, low 32 bits (64-byte aligned).
pub const Q_SQ_BASE_LO: usize = 0x00;
/// Queue register: RW, submission ring base address, high 32 bits.
pub const Q_SQ_BASE_HI: usize = 0x04;
/// Queue register: RW, completion ring base address, low 32 bits (16-byte aligned).
pub const Q_CQ_BASE_LO: usize = 0x08;
/// Queue register: RW, completion ring base address, high 32 bits.
pub const Q_CQ_BASE_HI: usize = 0x0c;
/// Queue register: RW, number of entries of both rings (power of two, 2..=[`MAX_RING_ENTRIES`]).
pub const Q_SIZE: usize = 0x10;
/// Queue register: RW, queue control ([`QCTRL_ENABLE`], [`QCTRL_RESET`]).
pub const Q_CTRL: usize = 0x14;
/// Queue register: RO, queue status ([`QSTATUS_ENABLED`], [`QSTATUS_ERROR`]).
pub const Q_STATUS: usize = 0x18;
/// Queue register: WO doorbell, new submission tail (index of the next free slot).
pub const Q_SQ_TAIL: usize = 0x1c;
/// Queue register: RO, submission head (next descriptor the device will fetch).
pub const Q_SQ_HEAD: usize = 0x20;
/// Queue register: WO doorbell, completion head (next completion the driver will read).
pub const Q_CQ_HEAD: usize = 0x24;
/// Queue register: RO, completion tail (next completion slot the device will write).
pub const Q_CQ_TAIL: usize = 0x28;
/// Queue register: RO, descriptors completed on this queue since its last reset.
pub const Q_DONE: usize = 0x2c;

/// Byte offset in BAR0 of queue `q`'s register `reg`.
pub const fn queue_reg(q: usize, reg: usize) -> usize {
    QUEUE_BASE + q * QUEUE_STRIDE + reg
}

/// [`Q_CTRL`] bit 0: the queue fetches descriptors (ring registers are read when this is set).
pub const QCTRL_ENABLE: u32 = 1 << 0;
/// [`Q_CTRL`] bit 1: write 1 to reset the queue; reads back 0 once done.
pub const QCTRL_RESET: u32 = 1 << 1;
/// [`Q_STATUS`] bit 0: the queue is enabled.
pub const QSTATUS_ENABLED: u32 = 1 << 0;
/// [`Q_STATUS`] bit 1: the queue halted on a ring error; reset it.
pub const QSTATUS_ERROR: u32 = 1 << 1;

/// BAR0's register map once more, as a table for typed register accessors: `bar0_registers!(m)`
/// calls `m! { ... }` with every register in the syntax of the kernel's `register!` macro
/// (`kernel::io::register`, Linux 7.3): name, width, offset (queue registers are arrays of
/// [`MAX_QUEUES`] with stride [`QUEUE_STRIDE`]) and bit fields. The guest module passes that
/// macro and so gets one type per register with a getter and a `with_` setter per field; the ABI
/// crate's tests expand the same table and check it against the constants above and against
/// `docs/datasheet.md`, so the three cannot drift apart.
#[allow(unused_macros)]
macro_rules! bar0_registers {
    ($m:ident) => {
        $m! {
            /// Identification: reads [`DEVICE_MAGIC`].
            pub ID(u32) @ 0x000 { 31:0 magic; }
            /// Programming-interface version ([`VERSION`]).
            pub VERSION(u32) @ 0x004 {
                /// Incompatible changes ([`VERSION_MAJOR`]).
                31:16 major;
                /// Compatible additions.
                15:0 minor;
            }
            /// Queue pairs in this instance.
            pub CAP_QUEUES(u32) @ 0x008 { 31:0 count; }
            /// Largest ring size in entries.
            pub CAP_RING(u32) @ 0x00c { 31:0 entries; }
            /// Largest scatter-gather list in entries.
            pub CAP_SG(u32) @ 0x010 { 31:0 entries; }
            /// Supported opcodes, bit n for opcode n.
            pub CAP_OPCODES(u32) @ 0x014 { 31:0 mask; }
            /// Internal memory size in bytes, bits 31:0.
            pub MEM_SIZE_LO(u32) @ 0x018 { 31:0 bytes; }
            /// Internal memory size in bytes, bits 63:32.
            pub MEM_SIZE_HI(u32) @ 0x01c { 31:0 bytes; }
            /// Device control (write-only).
            pub DEV_CTRL(u32) @ 0x020 {
                /// Write 1: reset the whole device ([`CTRL_RESET`]).
                0:0 reset => bool;
            }
            /// Device status.
            pub DEV_STATUS(u32) @ 0x024 {
                /// Fatal error: every queue is halted until a device reset ([`STATUS_FATAL`]).
                1:1 fatal => bool;
                /// Out of reset and accepting work ([`STATUS_READY`]).
                0:0 ready => bool;
            }
            /// Sticky error bits, write 1 to clear; setting any raises the error vector.
            pub ERROR(u32) @ 0x028 {
                /// Fatal internal error ([`ERR_FATAL`]).
                4:4 fatal => bool;
                /// A DMA named memory outside the device's mappings ([`ERR_DMA_VIOLATION`]).
                3:3 dma_violation => bool;
                /// A doorbell or ring register was written with an invalid value
                /// ([`ERR_BAD_DOORBELL`]).
                2:2 bad_doorbell => bool;
                /// A completion could not be written ([`ERR_CQ_WRITE`]).
                1:1 cq_write => bool;
                /// A submission-ring entry could not be read ([`ERR_RING_FETCH`]).
                0:0 ring_fetch => bool;
            }
            /// Interrupt coalescing.
            pub IRQ_COALESCE(u32) @ 0x02c {
                /// Time in microseconds.
                31:16 time_us;
                /// Completion count.
                15:0 count;
            }
            /// INTx/MSI interrupt cause, write 1 to clear.
            pub IRQ_CAUSE(u32) @ 0x030 {
                /// A device error ([`IRQ_CAUSE_ERROR`]).
                31:31 error => bool;
                /// Bit q: queue q posted completions ([`irq_cause_queue`]).
                7:0 queues;
            }
            /// Largest transfer per descriptor in bytes.
            pub CAP_MAX_XFER(u32) @ 0x034 { 31:0 bytes; }
            /// Address bits the device drives ([`MIN_DMA_BITS`]..=64): the DMA mask to set.
            pub CAP_DMA_BITS(u32) @ 0x038 { 7:0 bits; }

            /// Direct transfer source address, bits 31:0.
            pub DMA_SRC_LO(u32) @ 0x040 { 31:0 addr; }
            /// Direct transfer source address, bits 63:32.
            pub DMA_SRC_HI(u32) @ 0x044 { 31:0 addr; }
            /// Direct transfer destination address, bits 31:0.
            pub DMA_DST_LO(u32) @ 0x048 { 31:0 addr; }
            /// Direct transfer destination address, bits 63:32.
            pub DMA_DST_HI(u32) @ 0x04c { 31:0 addr; }
            /// Direct transfer length in bytes.
            pub DMA_LEN(u32) @ 0x050 { 31:0 bytes; }
            /// Direct transfer FILL pattern.
            pub DMA_PATTERN(u32) @ 0x054 { 31:0 pattern; }
            /// Direct transfer command: writing it starts the transfer.
            pub DMA_CMD(u32) @ 0x058 {
                /// An `OP_*` opcode.
                7:0 opcode;
            }
            /// Direct transfer status.
            pub DMA_STATUS(u32) @ 0x05c {
                /// The finished transfer's `CS_*` status (valid with `done`).
                31:16 code;
                /// The last transfer finished ([`DMA_STATUS_DONE`]).
                1:1 done => bool;
                /// A transfer is running ([`DMA_STATUS_BUSY`]).
                0:0 busy => bool;
            }
            /// The finished transfer's result word.
            pub DMA_RESULT(u32) @ 0x060 { 31:0 value; }
            /// Bytes the finished transfer moved.
            pub DMA_BYTES(u32) @ 0x064 { 31:0 bytes; }
            /// Fault-injection epoch (test harnesses).
            pub FAULT_EPOCH(u32) @ 0x068 { 31:0 epoch; }

            /// Queue q: submission ring address, bits 31:0 (64-byte aligned).
            pub Q_SQ_BASE_LO(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x100 { 31:0 addr; }
            /// Queue q: submission ring address, bits 63:32.
            pub Q_SQ_BASE_HI(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x104 { 31:0 addr; }
            /// Queue q: completion ring address, bits 31:0 (16-byte aligned).
            pub Q_CQ_BASE_LO(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x108 { 31:0 addr; }
            /// Queue q: completion ring address, bits 63:32.
            pub Q_CQ_BASE_HI(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x10c { 31:0 addr; }
            /// Queue q: entries in each ring (a power of two).
            pub Q_SIZE(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x110 { 31:0 entries; }
            /// Queue q: control.
            pub Q_CTRL(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x114 {
                /// Write 1: reset the queue ([`QCTRL_RESET`]).
                1:1 reset => bool;
                /// The queue fetches descriptors ([`QCTRL_ENABLE`]).
                0:0 enable => bool;
            }
            /// Queue q: status.
            pub Q_STATUS(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x118 {
                /// Halted on a ring error ([`QSTATUS_ERROR`]).
                1:1 error => bool;
                /// Enabled ([`QSTATUS_ENABLED`]).
                0:0 enabled => bool;
            }
            /// Queue q: submission doorbell, index of the next free slot.
            pub Q_SQ_TAIL(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x11c { 31:0 index; }
            /// Queue q: next descriptor the device will fetch.
            pub Q_SQ_HEAD(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x120 { 31:0 index; }
            /// Queue q: completion doorbell, next completion the driver will read.
            pub Q_CQ_HEAD(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x124 { 31:0 index; }
            /// Queue q: next completion slot the device will write.
            pub Q_CQ_TAIL(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x128 { 31:0 index; }
            /// Queue q: descriptors completed since the queue's last reset.
            pub Q_DONE(u32)[MAX_QUEUES, stride = QUEUE_STRIDE] @ 0x12c { 31:0 count; }
        }
    };
}

/// Offset of the MSI-X table in BAR0 (emulated by the PCI host, 16 bytes a vector).
pub const MSIX_TABLE_OFFSET: u32 = 0x1000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x1800;
/// MSI-X vectors: one per queue pair (vector q), then the device-error vector.
pub const MSIX_VECTORS: u16 = MAX_QUEUES as u16 + 1;

/// Opcode: copy `len` bytes from guest memory `src` to guest memory `dst`.
pub const OP_COPY: u8 = 1;
/// Opcode: copy `len` bytes from guest memory `src` to internal memory offset `dst`.
pub const OP_WRITE: u8 = 2;
/// Opcode: copy `len` bytes from internal memory offset `src` to guest memory `dst`.
pub const OP_READ: u8 = 3;
/// Opcode: fill `len` bytes of guest memory at `dst` with the 32-bit `pattern` (little-endian).
pub const OP_FILL: u8 = 4;
/// Opcode: CRC32C (Castagnoli) of `len` bytes at guest `src`, returned in the completion result.
pub const OP_CHECKSUM: u8 = 5;
/// Bit mask of the supported opcodes (value of [`REG_CAP_OPCODES`]).
pub const SUPPORTED_OPCODES: u32 =
    (1 << OP_COPY) | (1 << OP_WRITE) | (1 << OP_READ) | (1 << OP_FILL) | (1 << OP_CHECKSUM);

/// The opcodes as a type: the one table of their names and of which operands are guest memory,
/// used by the device's engine, the driver's request checks, the agent and the fault rules.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// [`OP_COPY`].
    Copy = OP_COPY,
    /// [`OP_WRITE`].
    Write = OP_WRITE,
    /// [`OP_READ`].
    Read = OP_READ,
    /// [`OP_FILL`].
    Fill = OP_FILL,
    /// [`OP_CHECKSUM`].
    Checksum = OP_CHECKSUM,
}

impl Opcode {
    /// Every opcode, in numeric order.
    pub const ALL: [Opcode; 5] = [
        Opcode::Copy,
        Opcode::Write,
        Opcode::Read,
        Opcode::Fill,
        Opcode::Checksum,
    ];

    /// The value in a descriptor's `opcode` byte.
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// The opcode a descriptor byte names, or `None` for an unsupported one.
    pub const fn from_raw(raw: u8) -> Option<Opcode> {
        match raw {
            OP_COPY => Some(Opcode::Copy),
            OP_WRITE => Some(Opcode::Write),
            OP_READ => Some(Opcode::Read),
            OP_FILL => Some(Opcode::Fill),
            OP_CHECKSUM => Some(Opcode::Checksum),
            _ => None,
        }
    }

    /// Its lower-case name, as in fault rules and reports (`"copy"`).
    pub const fn name(self) -> &'static str {
        match self {
            Opcode::Copy => "copy",
            Opcode::Write => "write",
            Opcode::Read => "read",
            Opcode::Fill => "fill",
            Opcode::Checksum => "checksum",
        }
    }

    /// The opcode called `name` (see [`Opcode::name`]).
    pub fn from_name(name: &str) -> Option<Opcode> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].name().as_bytes() == name.as_bytes() {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The opcode reads a source at all (FILL has none: its `src` must be 0).
    pub const fn has_src(self) -> bool {
        !matches!(self, Opcode::Fill)
    }

    /// The opcode writes a destination at all (CHECKSUM returns its result in the completion).
    pub const fn has_dst(self) -> bool {
        !matches!(self, Opcode::Checksum)
    }

    /// The source is guest memory (may be a scatter-gather list); else internal memory or none.
    pub const fn src_in_guest(self) -> bool {
        matches!(self, Opcode::Copy | Opcode::Write | Opcode::Checksum)
    }

    /// The destination is guest memory (may be a scatter-gather list); else internal memory or
    /// none.
    pub const fn dst_in_guest(self) -> bool {
        matches!(self, Opcode::Copy | Opcode::Read | Opcode::Fill)
    }
}

/// Descriptor flag: `src` is the guest address of a scatter-gather list of `src_nseg` entries.
pub const DESC_SRC_SG: u8 = 1 << 0;
/// Descriptor flag: `dst` is the guest address of a scatter-gather list of `dst_nseg` entries.
pub const DESC_DST_SG: u8 = 1 << 1;
/// Descriptor flag: do not count this completion towards an interrupt.
pub const DESC_NO_IRQ: u8 = 1 << 2;
/// All defined descriptor flags; any other bit makes the descriptor malformed.
pub const DESC_FLAGS_VALID: u8 = DESC_SRC_SG | DESC_DST_SG | DESC_NO_IRQ;

/// A submission-ring entry (64 bytes, little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// One of the `OP_*` opcodes.
    pub opcode: u8,
    /// `DESC_*` flags.
    pub flags: u8,
    /// Entries in the source scatter-gather list (with [`DESC_SRC_SG`]), else 0.
    pub src_nseg: u16,
    /// Entries in the destination scatter-gather list (with [`DESC_DST_SG`]), else 0.
    pub dst_nseg: u16,
    /// Reserved, must be 0.
    pub rsvd0: u16,
    /// Driver's tag, returned unchanged in the completion.
    pub tag: u32,
    /// Transfer length in bytes (1..=[`MAX_TRANSFER`]).
    pub len: u32,
    /// Source: guest address, SG-list address, or internal memory offset (by opcode).
    pub src: u64,
    /// Destination: guest address, SG-list address, or internal memory offset (by opcode).
    pub dst: u64,
    /// FILL pattern; 0 for other opcodes.
    pub pattern: u32,
    /// Reserved, must be 0.
    pub rsvd1: u32,
    /// Reserved, must be 0.
    pub rsvd2: [u64; 3],
}

/// Size of a [`Descriptor`] in bytes.
pub const DESC_SIZE: usize = 64;

/// A scatter-gather list entry (16 bytes, little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgEntry {
    /// Guest address of the segment.
    pub addr: u64,
    /// Length of the segment in bytes (at least 1).
    pub len: u32,
    /// Reserved, must be 0.
    pub rsvd: u32,
}

/// Size of an [`SgEntry`] in bytes.
pub const SG_ENTRY_SIZE: usize = 16;

/// A completion-ring entry (16 bytes, little-endian). The device writes bytes 0..12 first and
/// the `status`/`phase` word last, so a driver that sees the expected phase sees the whole entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Opcode result: the CRC32C for [`OP_CHECKSUM`], else 0.
    pub result: u32,
    /// Bytes transferred.
    pub bytes: u32,
    /// The descriptor's tag.
    pub tag: u32,
    /// One of the `CS_*` status codes.
    pub status: u16,
    /// Bit 0: phase; flips each time the device wraps the completion ring (first pass: 1).
    pub phase: u16,
}

/// Size of a [`Completion`] in bytes.
pub const COMPLETION_SIZE: usize = 16;

/// Completion status: success.
pub const CS_OK: u16 = 0;
/// Completion status: unknown or unsupported opcode.
pub const CS_BAD_OPCODE: u16 = 1;
/// Completion status: length 0, above [`MAX_TRANSFER`], or SG lengths that do not sum to `len`.
pub const CS_BAD_LENGTH: u16 = 2;
/// Completion status: an SG list is empty or longer than [`MAX_SG_SEGMENTS`].
pub const CS_TOO_MANY_SEGMENTS: u16 = 3;
/// Completion status: an address is not covered by the device's DMA mappings.
pub const CS_DMA_FAULT: u16 = 4;
/// Completion status: source and destination overlap.
pub const CS_OVERLAP: u16 = 5;
/// Completion status: address + length overflows 64 bits.
pub const CS_ADDR_OVERFLOW: u16 = 6;
/// Completion status: reserved field or unknown flag set, or a flag the opcode cannot take.
pub const CS_BAD_DESCRIPTOR: u16 = 7;
/// Completion status: internal-memory range outside the internal memory.
pub const CS_INTERNAL_RANGE: u16 = 8;
/// Completion status: injected device error (fault injection).
pub const CS_DEVICE_ERROR: u16 = 9;
/// Completion status: an address lies at or above 2^[`REG_CAP_DMA_BITS`]: the device cannot
/// drive it (the driver's DMA mask is wider than the device).
pub const CS_ADDR_WIDTH: u16 = 10;

/// A completion status: the `CS_*` codes as one type, shared by the device, the driver, the
/// agent and the harness. The wire carries [`Status::raw`]; an injected `error_status` fault
/// may put a code on the wire that is none of these ([`Status::from_raw`] says `None`).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// [`CS_OK`]
    Ok = CS_OK,
    /// [`CS_BAD_OPCODE`]
    BadOpcode = CS_BAD_OPCODE,
    /// [`CS_BAD_LENGTH`]
    BadLength = CS_BAD_LENGTH,
    /// [`CS_TOO_MANY_SEGMENTS`]
    TooManySegments = CS_TOO_MANY_SEGMENTS,
    /// [`CS_DMA_FAULT`]
    DmaFault = CS_DMA_FAULT,
    /// [`CS_OVERLAP`]
    Overlap = CS_OVERLAP,
    /// [`CS_ADDR_OVERFLOW`]
    AddrOverflow = CS_ADDR_OVERFLOW,
    /// [`CS_BAD_DESCRIPTOR`]
    BadDescriptor = CS_BAD_DESCRIPTOR,
    /// [`CS_INTERNAL_RANGE`]
    InternalRange = CS_INTERNAL_RANGE,
    /// [`CS_DEVICE_ERROR`]
    DeviceError = CS_DEVICE_ERROR,
    /// [`CS_ADDR_WIDTH`]
    AddrWidth = CS_ADDR_WIDTH,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::BadOpcode,
        Status::BadLength,
        Status::TooManySegments,
        Status::DmaFault,
        Status::Overlap,
        Status::AddrOverflow,
        Status::BadDescriptor,
        Status::InternalRange,
        Status::DeviceError,
        Status::AddrWidth,
    ];

    /// The code on the wire.
    pub const fn raw(self) -> u16 {
        self as u16
    }

    /// The status a wire code names, if any.
    pub const fn from_raw(raw: u16) -> Option<Status> {
        if (raw as usize) < Status::ALL.len() {
            Some(Status::ALL[raw as usize])
        } else {
            None
        }
    }

    /// Its name in the datasheet (`DMA_FAULT`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadOpcode => "BAD_OPCODE",
            Status::BadLength => "BAD_LENGTH",
            Status::TooManySegments => "TOO_MANY_SEGMENTS",
            Status::DmaFault => "DMA_FAULT",
            Status::Overlap => "OVERLAP",
            Status::AddrOverflow => "ADDR_OVERFLOW",
            Status::BadDescriptor => "BAD_DESCRIPTOR",
            Status::InternalRange => "INTERNAL_RANGE",
            Status::DeviceError => "DEVICE_ERROR",
            Status::AddrWidth => "ADDR_WIDTH",
        }
    }
}

/// [`REG_IRQ_CAUSE`] bit for the error vector (bit q, q < [`MAX_QUEUES`], is queue q).
pub const IRQ_CAUSE_ERROR: u32 = 1 << 31;

/// [`REG_IRQ_CAUSE`] bit for queue `q`.
pub const fn irq_cause_queue(q: usize) -> u32 {
    1 << q
}

/// Linux `_IOC()` encoding (x86), here so that this file has no dependencies.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// ioctl type letter of `/dev/dmalabN`.
pub const IOC_TYPE: u8 = b'D';
/// Largest request the driver accepts, in bytes (1 MiB).
pub const MAX_REQUEST: u32 = 1 << 20;

/// Interrupt mode reported in [`DeviceInfo::irq_mode`]: legacy INTx.
pub const IRQ_MODE_INTX: u32 = 0;
/// Interrupt mode: one MSI vector for everything.
pub const IRQ_MODE_MSI: u32 = 1;
/// Interrupt mode: MSI-X, one vector per queue plus the error vector.
pub const IRQ_MODE_MSIX: u32 = 2;

/// Answer of [`IOC_INFO`]: what the driver found at probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`REG_ID`] as read by the driver.
    pub magic: u32,
    /// [`REG_VERSION`] as read by the driver.
    pub version: u32,
    /// Queue pairs in use.
    pub queues: u32,
    /// Interrupt vectors allocated.
    pub vectors: u32,
    /// One of the `IRQ_MODE_*` values.
    pub irq_mode: u32,
    /// Ring entries per queue.
    pub ring_size: u32,
    /// Largest request in bytes ([`MAX_REQUEST`]).
    pub max_request: u32,
    /// DMA mask width in bits (64, or 32 after fallback).
    pub dma_mask_bits: u32,
    /// Internal memory size in bytes.
    pub mem_size: u64,
    /// PCI bus/device/function (bus << 8 | devfn).
    pub bdf: u32,
    /// Bytes of bounce-buffer pool per queue.
    pub pool_bytes: u32,
    /// How requests reach the caller's memory: one of the `DMA_MODE_*` values (module
    /// parameter `dma_mode`).
    pub dma_mode: u32,
    /// In [`DMA_MODE_AUTO`], the smallest request that goes zero-copy (module parameter
    /// `zero_copy_min`).
    pub zero_copy_min: u32,
}

/// [`DeviceInfo::dma_mode`]: zero-copy from [`DeviceInfo::zero_copy_min`] bytes up, the bounce
/// pool below (the default).
pub const DMA_MODE_AUTO: u32 = 0;
/// [`DeviceInfo::dma_mode`]: every request through the bounce pool.
pub const DMA_MODE_BOUNCE: u32 = 1;
/// [`DeviceInfo::dma_mode`]: every request zero-copy where its memory allows.
pub const DMA_MODE_ZERO_COPY: u32 = 2;

/// [`Request::path`]: the request named no guest memory (FILL into internal memory, ...), or
/// failed before choosing.
pub const PATH_NONE: u32 = 0;
/// [`Request::path`]: copied through the driver's bounce pool.
pub const PATH_BOUNCE: u32 = 1;
/// [`Request::path`]: the device worked on the caller's own pages (zero-copy).
pub const PATH_ZERO_COPY: u32 = 2;

/// Request of [`IOC_SUBMIT`]: one descriptor, built by the driver from user buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// In: one of the `OP_*` opcodes.
    pub opcode: u8,
    /// In: queue to submit on.
    pub queue: u8,
    /// In: 0 or 1 = as few segments as the buffers allow; n > 1 = scatter-gather lists of at
    /// least n segments per guest-memory side (at most [`MAX_SG_SEGMENTS`]).
    pub nseg: u16,
    /// In: transfer length in bytes (1..=[`MAX_REQUEST`]).
    pub len: u32,
    /// In: FILL pattern.
    pub pattern: u32,
    /// In: milliseconds to wait for the completion (0: 5000).
    pub timeout_ms: u32,
    /// In: user address of the data the device reads (COPY, WRITE, CHECKSUM), else 0.
    pub src: u64,
    /// In: user address receiving the data the device writes (COPY, READ, FILL), else 0.
    pub dst: u64,
    /// In: internal-memory offset (WRITE destination, READ source).
    pub dev_offset: u64,
    /// Out: the device's `CS_*` completion status.
    pub status: u32,
    /// Out: bytes the device reported done.
    pub bytes: u32,
    /// Out: the completion's result word (CRC32C for CHECKSUM).
    pub result: u32,
    /// Out: segments used on the guest side(s) (1 = no scatter-gather list).
    pub segments: u32,
    /// Out: nanoseconds from doorbell to the completion being seen.
    pub latency_ns: u64,
    /// Out: the descriptor tag the driver used (the device's event log names it too).
    pub tag: u32,
    /// Out, [`IOC_SUBMIT_BATCH`] only: this request's errno as a positive number (0: it
    /// succeeded, status OK). [`IOC_SUBMIT`] leaves it 0: the ioctl's own return says it.
    pub error: u32,
    /// Out: how the driver reached the caller's memory (`PATH_*`).
    pub path: u32,
    /// Out, zero-copy only: pages pinned (0 otherwise).
    pub pinned_pages: u32,
}

/// Largest number of requests in one [`IOC_SUBMIT_BATCH`].
pub const MAX_BATCH: u32 = 32;

/// Argument of [`IOC_SUBMIT_BATCH`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// In: user address of an array of `count` [`Request`]s. Each is written back as
    /// [`IOC_SUBMIT`] would write it, with its own outcome in [`Request::error`].
    pub requests: u64,
    /// In: how many (1..=[`MAX_BATCH`]).
    pub count: u32,
    /// Out: how many succeeded.
    pub done: u32,
}

/// Argument of [`IOC_DMA_SELFTEST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTest {
    /// In: user address of the buffer; cache-line (64-byte) aligned.
    pub buf: u64,
    /// In: its length in bytes: a multiple of 128, at most [`MAX_REQUEST`].
    pub len: u32,
    /// In: device operations to run on the one mapping (1..=64).
    pub rounds: u32,
    /// In: the queue to run them on.
    pub queue: u32,
    /// Out: rounds whose result the CPU read back (after syncing for the CPU) and found right.
    pub verified: u32,
}

/// Per-queue counters in [`Stats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QueueStats {
    /// Descriptors submitted.
    pub submitted: u64,
    /// Completions received and matched to a request.
    pub completed: u64,
    /// Completions with a status other than [`CS_OK`].
    pub errors: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Interrupts handled for this queue.
    pub irqs: u64,
    /// Completions that matched no request in flight (stale, duplicate or garbage tags).
    pub stray_completions: u64,
    /// Queue resets done by the driver.
    pub resets: u64,
    /// Bytes moved by successful requests.
    pub bytes: u64,
}

/// Answer of [`IOC_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stats {
    /// Per queue (entries beyond [`DeviceInfo::queues`] are 0).
    pub queue: [QueueStats; MAX_QUEUES],
    /// Interrupts on the error vector.
    pub error_irqs: u64,
    /// Sticky error bits seen, OR-ed together.
    pub error_bits: u64,
    /// Device resets done by the driver.
    pub device_resets: u64,
    /// Requests whose guest memory the device reached zero-copy.
    pub zero_copy: u64,
    /// Requests with guest memory copied through the bounce pool.
    pub bounced: u64,
    /// Of those, requests the mode wanted zero-copy but whose memory did not allow it (not
    /// pinnable, a destination not cache-line aligned, source and destination overlapping,
    /// too fragmented for one scatter-gather list, or a failed mapping).
    pub zero_copy_fallbacks: u64,
    /// Zero-copy request storage the driver made (page arrays, scatter-gather tables, segment
    /// lists): one per request mapped at the same time at the most, reused by every later one;
    /// a request path that allocated would count one per request.
    pub zero_copy_storage: u64,
}

/// `_IOR('D', 1, DeviceInfo)`: what the driver found at probe.
pub const IOC_INFO: u32 = ioc(2, IOC_TYPE, 1, core::mem::size_of::<DeviceInfo>());
/// `_IOWR('D', 2, Request)`: run one request and wait for it.
pub const IOC_SUBMIT: u32 = ioc(3, IOC_TYPE, 2, core::mem::size_of::<Request>());
/// `_IOR('D', 3, Stats)`: driver counters.
pub const IOC_STATS: u32 = ioc(2, IOC_TYPE, 3, core::mem::size_of::<Stats>());
/// `_IO('D', 4)`: reset the device (fails requests in flight with ECANCELED).
pub const IOC_RESET: u32 = ioc(0, IOC_TYPE, 4, 0);
/// `_IOWR('D', 5, Batch)`: run up to [`MAX_BATCH`] requests, on any queues, with as many in
/// flight at once as the rings and bounce pools allow; wait for all. One system call and one
/// doorbell per queue for the lot: how a single thread reaches a queue depth above one.
/// Fails only when the batch itself is malformed (`EINVAL`, `EFAULT`); each request's outcome
/// is in its [`Request::error`].
pub const IOC_SUBMIT_BATCH: u32 = ioc(3, IOC_TYPE, 5, core::mem::size_of::<Batch>());
/// `_IOWR('D', 6, SelfTest)`: the streaming DMA API's whole cycle on one mapping of the
/// caller's buffer (docs/streaming-dma.md): pinned and mapped once, then `rounds` times the
/// device copies the first half onto the second, the driver syncs the mapping for the CPU,
/// checks the copy, writes the next round's data and syncs it back for the device; unmapped at
/// the end. Fails with `EINVAL` for a malformed argument, else the round's errno.
pub const IOC_DMA_SELFTEST: u32 = ioc(3, IOC_TYPE, 6, core::mem::size_of::<SelfTest>());

// Layout checks, compiled by every user of this file (the kernel module `include!`s it too), so
// the safety arguments that rely on these layouts hold in every build. Each size is the
// sum of the type's field sizes: no padding, every bit pattern valid.
const _: () = assert!(core::mem::size_of::<Descriptor>() == DESC_SIZE);
const _: () = assert!(DESC_SIZE == 1 + 1 + 2 + 2 + 2 + 4 + 4 + 8 + 8 + 4 + 28);
const _: () = assert!(core::mem::size_of::<SgEntry>() == SG_ENTRY_SIZE);
const _: () = assert!(SG_ENTRY_SIZE == 8 + 4 + 4);
const _: () = assert!(core::mem::size_of::<Completion>() == COMPLETION_SIZE);
const _: () = assert!(COMPLETION_SIZE == 4 + 4 + 4 + 2 + 2);
const _: () = assert!(queue_reg(MAX_QUEUES, 0) <= MSIX_TABLE_OFFSET as usize);
const _: () =
    assert!((MSIX_VECTORS as usize) * 16 <= (MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) as usize);
const _: () = assert!((MSIX_PBA_OFFSET as usize) + 8 <= BAR0_SIZE);
const _: () = assert!(core::mem::size_of::<DeviceInfo>() == 56);
const _: () = assert!(core::mem::size_of::<Request>() == 80);
const _: () = assert!(core::mem::size_of::<Batch>() == 16);
const _: () = assert!(core::mem::size_of::<SelfTest>() == 24);
const _: () = assert!(core::mem::size_of::<QueueStats>() == 64);
const _: () = assert!(core::mem::size_of::<Stats>() == 64 * MAX_QUEUES + 56);
const _: () = assert!(irq_cause_queue(MAX_QUEUES - 1) < IRQ_CAUSE_ERROR);
