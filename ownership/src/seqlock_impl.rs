// The ownership table's seqlock: one writer (the device), readers in another process (the
// oracle plugin) that never block it. Included by `lib.rs` (std atomics) and by the loom model
// `tests/loom_seqlock.rs` (loom's): the names `AtomicU64`, `Ordering`, `fence`, `Window`,
// `Kind` and the layout constants come from the including module.

/// The table's 64-bit words, however they are stored.
pub(crate) trait Words {
    /// Word `i` (inside the table).
    fn word(&self, i: usize) -> &AtomicU64;
}

/// Rewrites the table with `windows` (at most `capacity` of them; the rest are counted as
/// overflow). One writer at a time: the caller serializes.
///
/// The sequence word is odd while the entries change; a reader that saw the same even value
/// before and after its copy (with the fences below) copied one whole table.
pub(crate) fn publish(m: &impl Words, windows: &[Window], capacity: usize) {
    let seq = m.word(W_SEQ).load(Ordering::Relaxed);
    m.word(W_SEQ).store(seq + 1, Ordering::Relaxed);
    fence(Ordering::Release);
    let n = windows.len().min(capacity);
    for (i, w) in windows.iter().take(n).enumerate() {
        let base = HEADER_WORDS + ENTRY_WORDS * i;
        m.word(base).store(w.start, Ordering::Relaxed);
        m.word(base + 1).store(w.len, Ordering::Relaxed);
        let meta = u64::from(w.tag) | (u64::from(w.queue) << 32) | ((w.kind as u64) << 48);
        m.word(base + 2).store(meta, Ordering::Relaxed);
        m.word(base + 3).store(u64::from(w.slot), Ordering::Relaxed);
    }
    m.word(W_COUNT).store(n as u64, Ordering::Relaxed);
    m.word(W_OVERFLOW)
        .store((windows.len() - n) as u64, Ordering::Relaxed);
    m.word(W_SEQ).store(seq + 2, Ordering::Release);
}

/// A consistent copy of the table into `out` (at most `capacity` entries); returns the
/// sequence number it belongs to. Retries while the writer is at work.
pub(crate) fn snapshot(m: &impl Words, out: &mut Vec<Window>, capacity: usize) -> u64 {
    loop {
        let seq = m.word(W_SEQ).load(Ordering::Acquire);
        if !seq.is_multiple_of(2) {
            spin();
            continue;
        }
        out.clear();
        let n = (m.word(W_COUNT).load(Ordering::Relaxed) as usize).min(capacity);
        for i in 0..n {
            let base = HEADER_WORDS + ENTRY_WORDS * i;
            let meta = m.word(base + 2).load(Ordering::Relaxed);
            let Some(kind) = Kind::from_raw((meta >> 48) as u8) else {
                continue;
            };
            out.push(Window {
                start: m.word(base).load(Ordering::Relaxed),
                len: m.word(base + 1).load(Ordering::Relaxed),
                tag: meta as u32,
                queue: (meta >> 32) as u16,
                slot: m.word(base + 3).load(Ordering::Relaxed) as u32,
                kind,
            });
        }
        fence(Ordering::Acquire);
        if m.word(W_SEQ).load(Ordering::Relaxed) == seq {
            return seq;
        }
        spin();
    }
}
