//! The dmalab ABI shared by the device model, the guest agent and the guest kernel module.
//!
//! The definitions live in `abi/regs.rs` so the kernel module can `include!` the very same file.
#![no_std]
include!("../regs.rs");
// The layout assertions are in regs.rs itself, so the kernel build compiles them too.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_unknown_codes_are_none() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.raw()), i);
            assert_eq!(Status::from_raw(s.raw()), Some(*s));
        }
        assert_eq!(Status::from_raw(CS_DMA_FAULT), Some(Status::DmaFault));
        assert_eq!(Status::DmaFault.name(), "DMA_FAULT");
        assert_eq!(Status::from_raw(10), None);
        assert_eq!(Status::from_raw(0x7fff), None);
    }
}
