//! Ownership windows for the oracle: the guest-physical memory a posted descriptor hands to the
//! device, computed when its doorbell is handled and published in the shared table
//! (`dmalab-ownership`) that the oracle TCG plugin checks every guest CPU access against.
//!
//! From the doorbell until its completion is written, a descriptor owns: its own ring slot and
//! the scatter-gather lists it names (the CPU must not write them), the buffers the device reads
//! (the CPU must not write them) and the buffers it writes (the CPU must not touch them).

use dmalab_abi::{self as abi, Descriptor, Opcode};
use dmalab_ownership::{Kind, Window};

use crate::memory::MemView;
use crate::wire;

/// Windows one descriptor can open at most: its slot, two SG lists and their segments.
const MAX_WINDOWS: usize = 1 + 2 * (1 + abi::MAX_SG_SEGMENTS as usize);

/// The windows of the descriptor at `desc_addr` (ring slot `slot` of `queue`), as the device
/// will use it. A malformed descriptor or an unmapped range simply opens fewer windows: the
/// oracle checks what the device would touch, and the device refuses what it cannot.
pub(crate) fn windows_of(view: &MemView, queue: u16, slot: u32, desc_addr: u64) -> Vec<Window> {
    let mut raw = [0u8; abi::DESC_SIZE];
    if view.read(desc_addr, &mut raw).is_err() {
        return Vec::new();
    }
    windows_of_descriptor(
        view,
        queue,
        slot,
        &wire::decode_descriptor(&raw),
        Some(desc_addr),
    )
}

/// The windows of descriptor `d` as the device will use it: its ring slot at `desc_addr` (none
/// for a direct transfer, whose operands are registers), its SG lists and its buffers.
pub(crate) fn windows_of_descriptor(
    view: &MemView,
    queue: u16,
    slot: u32,
    d: &Descriptor,
    desc_addr: Option<u64>,
) -> Vec<Window> {
    let mut out = Vec::new();
    let mut add = |addr: u64, len: u64, kind: Kind| {
        for (start, len) in view.physical(addr, len) {
            if out.len() < MAX_WINDOWS {
                out.push(Window {
                    start,
                    len,
                    queue,
                    tag: d.tag,
                    slot,
                    kind,
                });
            }
        }
    };
    if let Some(a) = desc_addr {
        add(a, abi::DESC_SIZE as u64, Kind::Descriptor);
    }
    let Some(op) = Opcode::from_raw(d.opcode) else {
        return out;
    };
    let sides = [
        (
            op.has_src() && op.src_in_guest(),
            d.src,
            d.src_nseg,
            d.flags & abi::DESC_SRC_SG != 0,
            Kind::ReadOwned,
        ),
        (
            op.has_dst() && op.dst_in_guest(),
            d.dst,
            d.dst_nseg,
            d.flags & abi::DESC_DST_SG != 0,
            Kind::WriteOwned,
        ),
    ];
    for (in_guest, addr, nseg, sg, kind) in sides {
        if !in_guest {
            continue;
        }
        if !sg {
            add(addr, u64::from(d.len), kind);
            continue;
        }
        let n = u32::from(nseg).min(abi::MAX_SG_SEGMENTS);
        let table_len = u64::from(n) * abi::SG_ENTRY_SIZE as u64;
        add(addr, table_len, Kind::Descriptor);
        let mut table = vec![0u8; table_len as usize];
        if view.read(addr, &mut table).is_err() {
            continue;
        }
        for e in table.chunks_exact(abi::SG_ENTRY_SIZE) {
            let seg = wire::decode_sg(e);
            add(seg.addr, u64::from(seg.len), kind);
        }
    }
    out
}
