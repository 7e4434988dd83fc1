//! End-to-end: the real device server, the real QEMU, the real guest kernel and driver. One
//! test binary, so that its tests share one pool: `make e2e` runs as many at once as the
//! machine runs VMs (`dmalab_harness::slots`), and a test whose VMs are independent runs them
//! side by side too. Every VM keeps its logs in `target/e2e/<run>/`; `dmalab-timings` prints
//! where the time went.

mod driver;
mod faults;
