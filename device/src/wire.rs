//! Byte-exact little-endian encoding of the ring formats of `abi/regs.rs`. The device copies
//! ring entries out of guest memory into local buffers first and decodes those: a guest that
//! rewrites a descriptor while the device reads it gets a torn descriptor, never a torn device.

use dmalab_abi::{Completion, Descriptor, SgEntry, COMPLETION_SIZE, DESC_SIZE, SG_ENTRY_SIZE};

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Decodes a submission-ring entry.
pub fn decode_descriptor(b: &[u8; DESC_SIZE]) -> Descriptor {
    Descriptor {
        opcode: b[0],
        flags: b[1],
        src_nseg: u16_at(b, 2),
        dst_nseg: u16_at(b, 4),
        rsvd0: u16_at(b, 6),
        tag: u32_at(b, 8),
        len: u32_at(b, 12),
        src: u64_at(b, 16),
        dst: u64_at(b, 24),
        pattern: u32_at(b, 32),
        rsvd1: u32_at(b, 36),
        rsvd2: [u64_at(b, 40), u64_at(b, 48), u64_at(b, 56)],
    }
}

/// Encodes a submission-ring entry (what a driver writes).
pub fn encode_descriptor(d: &Descriptor) -> [u8; DESC_SIZE] {
    let mut b = [0u8; DESC_SIZE];
    b[0] = d.opcode;
    b[1] = d.flags;
    b[2..4].copy_from_slice(&d.src_nseg.to_le_bytes());
    b[4..6].copy_from_slice(&d.dst_nseg.to_le_bytes());
    b[6..8].copy_from_slice(&d.rsvd0.to_le_bytes());
    b[8..12].copy_from_slice(&d.tag.to_le_bytes());
    b[12..16].copy_from_slice(&d.len.to_le_bytes());
    b[16..24].copy_from_slice(&d.src.to_le_bytes());
    b[24..32].copy_from_slice(&d.dst.to_le_bytes());
    b[32..36].copy_from_slice(&d.pattern.to_le_bytes());
    b[36..40].copy_from_slice(&d.rsvd1.to_le_bytes());
    for (i, r) in d.rsvd2.iter().enumerate() {
        b[40 + 8 * i..48 + 8 * i].copy_from_slice(&r.to_le_bytes());
    }
    b
}

/// Decodes a scatter-gather entry.
pub fn decode_sg(b: &[u8]) -> SgEntry {
    debug_assert_eq!(b.len(), SG_ENTRY_SIZE);
    SgEntry {
        addr: u64_at(b, 0),
        len: u32_at(b, 8),
        rsvd: u32_at(b, 12),
    }
}

/// Encodes a scatter-gather entry.
pub fn encode_sg(e: &SgEntry) -> [u8; SG_ENTRY_SIZE] {
    let mut b = [0u8; SG_ENTRY_SIZE];
    b[0..8].copy_from_slice(&e.addr.to_le_bytes());
    b[8..12].copy_from_slice(&e.len.to_le_bytes());
    b[12..16].copy_from_slice(&e.rsvd.to_le_bytes());
    b
}

/// The first 12 bytes of a completion (written first) and its last word (status | phase << 16,
/// written last, in one 4-byte store).
pub fn encode_completion(c: &Completion) -> ([u8; 12], u32) {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&c.result.to_le_bytes());
    b[4..8].copy_from_slice(&c.bytes.to_le_bytes());
    b[8..12].copy_from_slice(&c.tag.to_le_bytes());
    (b, u32::from(c.status) | (u32::from(c.phase) << 16))
}

/// Decodes a completion-ring entry (what a driver reads).
pub fn decode_completion(b: &[u8; COMPLETION_SIZE]) -> Completion {
    Completion {
        result: u32_at(b, 0),
        bytes: u32_at(b, 4),
        tag: u32_at(b, 8),
        status: u16_at(b, 12),
        phase: u16_at(b, 14),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trip_and_offsets() {
        let d = Descriptor {
            opcode: 4,
            flags: 2,
            src_nseg: 0x0102,
            dst_nseg: 0x0304,
            rsvd0: 0,
            tag: 0xdead_beef,
            len: 0x1000,
            src: 0x1122_3344_5566_7788,
            dst: 0x99aa_bbcc_ddee_ff00,
            pattern: 0xa5a5_5a5a,
            rsvd1: 0,
            rsvd2: [0; 3],
        };
        let b = encode_descriptor(&d);
        assert_eq!(b[8..12], 0xdead_beefu32.to_le_bytes());
        assert_eq!(b[16], 0x88);
        assert_eq!(decode_descriptor(&b), d);
    }

    #[test]
    fn completion_phase_is_in_the_last_word() {
        let c = Completion {
            result: 1,
            bytes: 2,
            tag: 3,
            status: 4,
            phase: 1,
        };
        let (head, last) = encode_completion(&c);
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&head);
        b[12..].copy_from_slice(&last.to_le_bytes());
        assert_eq!(decode_completion(&b), c);
        assert_eq!(last, 4 | 1 << 16);
    }
}
