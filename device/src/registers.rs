//! Typed layouts of the BAR0 registers whose bits mean something. The bit positions are checked
//! at compile time against the constants of the shared ABI (`abi/regs.rs`), so the typed view
//! and the kernel module's view cannot drift apart.

use bitfield_struct::bitfield;
use dmalab_abi as abi;

/// `REG_DEV_CTRL`.
#[bitfield(u32)]
pub struct DevCtrl {
    pub reset: bool,
    #[bits(31)]
    __: u32,
}

/// `REG_DEV_STATUS`.
#[bitfield(u32)]
pub struct DevStatus {
    pub ready: bool,
    pub fatal: bool,
    #[bits(30)]
    __: u32,
}

/// `REG_ERROR` (sticky, write 1 to clear).
#[bitfield(u32)]
pub struct ErrorBits {
    pub ring_fetch: bool,
    pub cq_write: bool,
    pub bad_doorbell: bool,
    pub dma_violation: bool,
    pub fatal: bool,
    #[bits(27)]
    __: u32,
}

/// `REG_IRQ_COALESCE`.
#[bitfield(u32)]
pub struct IrqCoalesce {
    /// Raise after this many completions (0 and 1 both mean every completion).
    pub count: u16,
    /// Raise at the latest this many microseconds after the first unsignalled completion
    /// (0: when the submission ring runs empty).
    pub time_us: u16,
}

/// `REG_DMA_STATUS`.
#[bitfield(u32)]
pub struct DmaStatus {
    pub busy: bool,
    pub done: bool,
    #[bits(14)]
    __: u16,
    /// The finished transfer's `CS_*` status.
    pub code: u16,
}

/// Queue `Q_CTRL`.
#[bitfield(u32)]
pub struct QueueCtrl {
    pub enable: bool,
    pub reset: bool,
    #[bits(30)]
    __: u32,
}

/// Queue `Q_STATUS`.
#[bitfield(u32)]
pub struct QueueStatus {
    pub enabled: bool,
    pub error: bool,
    #[bits(30)]
    __: u32,
}

const _: () = {
    assert!(DevCtrl::new().with_reset(true).into_bits() == abi::CTRL_RESET);
    assert!(DevStatus::new().with_ready(true).into_bits() == abi::STATUS_READY);
    assert!(DevStatus::new().with_fatal(true).into_bits() == abi::STATUS_FATAL);
    assert!(ErrorBits::new().with_ring_fetch(true).into_bits() == abi::ERR_RING_FETCH);
    assert!(ErrorBits::new().with_cq_write(true).into_bits() == abi::ERR_CQ_WRITE);
    assert!(ErrorBits::new().with_bad_doorbell(true).into_bits() == abi::ERR_BAD_DOORBELL);
    assert!(ErrorBits::new().with_dma_violation(true).into_bits() == abi::ERR_DMA_VIOLATION);
    assert!(ErrorBits::new().with_fatal(true).into_bits() == abi::ERR_FATAL);
    assert!(DmaStatus::new().with_busy(true).into_bits() == abi::DMA_STATUS_BUSY);
    assert!(DmaStatus::new().with_done(true).into_bits() == abi::DMA_STATUS_DONE);
    assert!(DmaStatus::new().with_code(1).into_bits() == 1 << abi::DMA_STATUS_CODE_SHIFT);
    assert!(QueueCtrl::new().with_enable(true).into_bits() == abi::QCTRL_ENABLE);
    assert!(QueueCtrl::new().with_reset(true).into_bits() == abi::QCTRL_RESET);
    assert!(QueueStatus::new().with_enabled(true).into_bits() == abi::QSTATUS_ENABLED);
    assert!(QueueStatus::new().with_error(true).into_bits() == abi::QSTATUS_ERROR);
};
