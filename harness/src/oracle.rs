//! The ownership oracle's findings, as the harness reads them: `dmalab_ownership::findings`,
//! with the driver module's symbols from the agent's reports.

pub use dmalab_ownership::findings::{
    dma_api_args, helper_ranges, io_ranges, read, syscall_entry, OracleRun, Symbols, Violation,
};
