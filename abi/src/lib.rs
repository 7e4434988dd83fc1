//! The dmalab ABI shared by the device model, the guest agent and the guest kernel module.
//!
//! The definitions live in `abi/regs.rs` so the kernel module can `include!` the very same file.
#![no_std]
#![forbid(unsafe_code)]
#[cfg(test)]
extern crate std;
include!("../regs.rs");
// The layout assertions are in regs.rs itself, so the kernel build compiles them too.

#[cfg(test)]
mod tests {
    use super::*;

    /// One register of the `bar0_registers!` table.
    struct Reg {
        name: &'static str,
        offset: usize,
        /// (elements, stride) for the per-queue arrays.
        array: Option<(usize, usize)>,
        /// (name, high bit, low bit).
        fields: &'static [(&'static str, u32, u32)],
    }

    impl Reg {
        fn mask(&self, field: &str) -> u32 {
            let &(_, hi, lo) = self
                .fields
                .iter()
                .find(|f| f.0 == field)
                .unwrap_or_else(|| panic!("{} has no field {field}", self.name));
            (((1u64 << (hi + 1)) - 1) as u32) & !((1u32 << lo) - 1)
        }
    }

    macro_rules! collect {
        ($( $(#[$a:meta])* pub $name:ident ($st:ty) $([$n:expr, stride = $stride:expr])?
            @ $off:literal {
                $( $(#[$fa:meta])* $hi:literal : $lo:literal $f:ident $(=> $t:ty)? ; )*
            }
        )*) => {
            &[$(Reg {
                name: stringify!($name),
                offset: $off,
                array: {
                    #[allow(unused_variables)]
                    let a: Option<(usize, usize)> = None;
                    $(let a = Some(($n, $stride));)?
                    a
                },
                fields: &[$((stringify!($f), $hi, $lo)),*],
            }),*]
        };
    }

    const TABLE: &[Reg] = bar0_registers!(collect);

    fn reg(name: &str) -> &'static Reg {
        TABLE
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no register {name}"))
    }

    #[test]
    fn the_register_table_agrees_with_the_constants() {
        let device = [
            ("ID", REG_ID),
            ("VERSION", REG_VERSION),
            ("CAP_QUEUES", REG_CAP_QUEUES),
            ("CAP_RING", REG_CAP_RING),
            ("CAP_SG", REG_CAP_SG),
            ("CAP_OPCODES", REG_CAP_OPCODES),
            ("MEM_SIZE_LO", REG_MEM_SIZE_LO),
            ("MEM_SIZE_HI", REG_MEM_SIZE_HI),
            ("DEV_CTRL", REG_DEV_CTRL),
            ("DEV_STATUS", REG_DEV_STATUS),
            ("ERROR", REG_ERROR),
            ("IRQ_COALESCE", REG_IRQ_COALESCE),
            ("IRQ_CAUSE", REG_IRQ_CAUSE),
            ("CAP_MAX_XFER", REG_CAP_MAX_XFER),
            ("CAP_DMA_BITS", REG_CAP_DMA_BITS),
            ("DMA_SRC_LO", REG_DMA_SRC_LO),
            ("DMA_SRC_HI", REG_DMA_SRC_HI),
            ("DMA_DST_LO", REG_DMA_DST_LO),
            ("DMA_DST_HI", REG_DMA_DST_HI),
            ("DMA_LEN", REG_DMA_LEN),
            ("DMA_PATTERN", REG_DMA_PATTERN),
            ("DMA_CMD", REG_DMA_CMD),
            ("DMA_STATUS", REG_DMA_STATUS),
            ("DMA_RESULT", REG_DMA_RESULT),
            ("DMA_BYTES", REG_DMA_BYTES),
            ("FAULT_EPOCH", REG_FAULT_EPOCH),
        ];
        let queue = [
            ("Q_SQ_BASE_LO", Q_SQ_BASE_LO),
            ("Q_SQ_BASE_HI", Q_SQ_BASE_HI),
            ("Q_CQ_BASE_LO", Q_CQ_BASE_LO),
            ("Q_CQ_BASE_HI", Q_CQ_BASE_HI),
            ("Q_SIZE", Q_SIZE),
            ("Q_CTRL", Q_CTRL),
            ("Q_STATUS", Q_STATUS),
            ("Q_SQ_TAIL", Q_SQ_TAIL),
            ("Q_SQ_HEAD", Q_SQ_HEAD),
            ("Q_CQ_HEAD", Q_CQ_HEAD),
            ("Q_CQ_TAIL", Q_CQ_TAIL),
            ("Q_DONE", Q_DONE),
        ];
        assert_eq!(
            TABLE.len(),
            device.len() + queue.len(),
            "a register is missing"
        );
        for (name, offset) in device {
            let r = reg(name);
            assert_eq!((r.offset, r.array), (offset, None), "{name}");
        }
        for (name, offset) in queue {
            let r = reg(name);
            assert_eq!(r.offset, queue_reg(0, offset), "{name}");
            assert_eq!(r.array, Some((MAX_QUEUES, QUEUE_STRIDE)), "{name}");
        }
        for r in TABLE {
            let mut seen = 0u32;
            for &(f, ..) in r.fields {
                let m = r.mask(f);
                assert_eq!(seen & m, 0, "{}.{f} overlaps another field", r.name);
                seen |= m;
            }
        }
        let bits = [
            ("DEV_CTRL", "reset", CTRL_RESET),
            ("DEV_STATUS", "ready", STATUS_READY),
            ("DEV_STATUS", "fatal", STATUS_FATAL),
            ("ERROR", "ring_fetch", ERR_RING_FETCH),
            ("ERROR", "cq_write", ERR_CQ_WRITE),
            ("ERROR", "bad_doorbell", ERR_BAD_DOORBELL),
            ("ERROR", "dma_violation", ERR_DMA_VIOLATION),
            ("ERROR", "fatal", ERR_FATAL),
            ("IRQ_CAUSE", "error", IRQ_CAUSE_ERROR),
            ("IRQ_CAUSE", "queues", (1 << MAX_QUEUES) - 1),
            ("Q_CTRL", "enable", QCTRL_ENABLE),
            ("Q_CTRL", "reset", QCTRL_RESET),
            ("Q_STATUS", "enabled", QSTATUS_ENABLED),
            ("Q_STATUS", "error", QSTATUS_ERROR),
            ("VERSION", "major", 0xffff_0000),
            ("VERSION", "minor", 0xffff),
            ("IRQ_COALESCE", "count", 0xffff),
            ("IRQ_COALESCE", "time_us", 0xffff_0000),
            ("DMA_STATUS", "busy", DMA_STATUS_BUSY),
            ("DMA_STATUS", "done", DMA_STATUS_DONE),
            ("DMA_STATUS", "code", 0xffff << DMA_STATUS_CODE_SHIFT),
            ("DMA_CMD", "opcode", 0xff),
        ];
        for (r, f, mask) in bits {
            assert_eq!(reg(r).mask(f), mask, "{r}.{f}");
        }
    }

    /// The datasheet's two register tables list the same names at the same offsets.
    #[test]
    fn the_register_table_agrees_with_the_datasheet() {
        let sheet = include_str!("../../docs/datasheet.md");
        let mut rows = std::vec::Vec::new();
        for line in sheet.lines() {
            let cells: std::vec::Vec<&str> = line.split('|').map(str::trim).collect();
            // | `0x024` | DEV_STATUS | RO | ...
            if cells.len() > 3 && cells[1].starts_with("`0x") && cells[1].ends_with('`') {
                let hex = cells[1].trim_matches('`').trim_start_matches("0x");
                if let Ok(off) = usize::from_str_radix(hex, 16) {
                    rows.push((off, cells[2]));
                }
            }
        }
        for r in TABLE {
            let (name, offset) = match r.name.strip_prefix("Q_") {
                Some(q) => (q, r.offset - QUEUE_BASE),
                None => (r.name, r.offset),
            };
            assert!(
                rows.contains(&(offset, name)),
                "docs/datasheet.md has no row `{offset:#x}` | {name}"
            );
        }
    }

    #[test]
    fn every_opcode_round_trips_and_is_advertised() {
        let mut mask = 0;
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_raw(op.raw()), Some(op));
            assert_eq!(Opcode::from_name(op.name()), Some(op));
            mask |= 1 << op.raw();
            // every opcode moves data from somewhere or to somewhere in the guest
            assert!(op.src_in_guest() || op.dst_in_guest());
        }
        assert_eq!(mask, SUPPORTED_OPCODES);
        assert_eq!(Opcode::from_raw(0), None);
        assert_eq!(Opcode::from_raw(6), None);
        assert_eq!(Opcode::from_name("COPY"), None);
        assert!(!Opcode::Fill.has_src() && !Opcode::Checksum.has_dst());
    }

    #[test]
    fn every_status_round_trips_and_unknown_codes_are_none() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.raw()), i);
            assert_eq!(Status::from_raw(s.raw()), Some(*s));
        }
        assert_eq!(Status::from_raw(CS_DMA_FAULT), Some(Status::DmaFault));
        assert_eq!(Status::DmaFault.name(), "DMA_FAULT");
        assert_eq!(Status::from_raw(11), None);
        assert_eq!(Status::from_raw(0x7fff), None);
    }
}
