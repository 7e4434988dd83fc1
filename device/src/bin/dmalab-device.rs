//! dmalab-device: serves one dmalab device to QEMU's `vfio-user-pci` over a UNIX socket.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dmalab_device::abi;
use dmalab_device::control;
use dmalab_device::device::{Device, DeviceConfig};
use dmalab_device::eventlog::EventLog;
use dmalab_device::faults::RuleSet;
use dmalab_device::memory::MapTable;
use dmalab_device::vfio_server::{EventfdSink, VfioDevice};
use dmalab_device::vfio_user::Server;
use log::{error, info};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Serve a dmalab DMA test device to QEMU over vfio-user"
)]
struct Args {
    /// UNIX socket to listen on (QEMU: -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":...}}')
    #[arg(long)]
    socket: PathBuf,
    /// Queue pairs (1-8)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=abi::MAX_QUEUES as i64))]
    queues: u16,
    /// Address bits the device drives on the bus (CAP_DMA_BITS, 32-64): DMA to or beyond
    /// 2^bits is refused with ADDR_WIDTH (docs/datasheet.md#dma-addressing)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(abi::MIN_DMA_BITS as i64..=64))]
    dma_bits: u32,
    /// Internal memory size, in bytes or with a K/M/G suffix
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem_size: usize,
    /// Log level: error, warn, info, debug, trace
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
    /// Runtime control socket (JSON lines; the `dmalab` CLI speaks it)
    #[arg(long)]
    control: Option<PathBuf>,
    /// Fault rules (TOML, see docs/faults.md) in force from the start
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Write the event log (JSON lines) here; '-' is standard output
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Permissions of the vfio-user and control sockets (octal; the default lets only this
    /// user connect, e.g. 660 admits the group)
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Publish ownership windows (which guest memory each posted request owns) in this file
    /// for the oracle TCG plugin (docs/oracle.md); created mode 600
    #[arg(long)]
    oracle: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal permission mode like 600"))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 64M, 1G)"))?;
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if size == 0 || size > 16 << 30 {
        return Err(format!(
            "internal memory size must be 1 byte..16G, not '{s}'"
        ));
    }
    Ok(size)
}

fn open_event_log(path: &Option<PathBuf>) -> Result<EventLog, String> {
    Ok(match path {
        None => EventLog::disabled(),
        Some(p) if p.as_os_str() == "-" => EventLog::to_writer(Box::new(std::io::stdout())),
        Some(p) => {
            let f = File::create(p)
                .map_err(|e| format!("cannot create event log {}: {e}", p.display()))?;
            EventLog::to_writer(Box::new(f) as Box<dyn Write + Send>)
        }
    })
}

/// Raises the open-file limit to its hard maximum: the client's DMA mappings share one
/// descriptor per backing file, but distinct files (and the control clients) each hold one,
/// and the soft limit is often far below what the hard one allows.
fn raise_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                ..lim
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                log::info!(
                    "open-file limit raised from {} to {}",
                    lim.rlim_cur,
                    lim.rlim_max
                );
            }
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    raise_file_limit();
    control::claim_socket_path(&args.socket)?;
    let log = Arc::new(open_event_log(&args.event_log)?);
    // SIGTERM/SIGINT: write the counters, remove the sockets, leave with status 0. Installed
    // before any socket exists: a client that sees the socket may signal at once, and the
    // default action would kill the server with its counters unwritten and its sockets left.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    let (sig_log, sig_path, sig_control) = (log.clone(), args.socket.clone(), args.control.clone());
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            info!("signal {sig}: shutting down");
            sig_log.finish();
            let _ = std::fs::remove_file(&sig_path);
            if let Some(c) = &sig_control {
                let _ = std::fs::remove_file(c);
            }
            std::process::exit(0);
        }
    });

    let maps = Arc::new(MapTable::new());
    let irqs = Arc::new(EventfdSink::default());
    let faults = match &args.faults {
        None => RuleSet::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read fault rules {}: {e}", p.display()))?;
            RuleSet::from_toml(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
    };
    let cfg = DeviceConfig {
        queues: args.queues as usize,
        internal_mem: args.mem_size,
        faults,
        dma_bits: args.dma_bits,
    };
    let device = Device::new(&cfg, maps.clone(), irqs.clone(), log.clone())
        .map_err(|e| format!("device: {e}"))?;
    if let Some(path) = &args.oracle {
        let table = dmalab_ownership::Publisher::create(path)
            .map_err(|e| format!("ownership table {}: {e}", path.display()))?;
        device.attach_oracle(Arc::new(table));
        info!("publishing ownership windows in {}", path.display());
    }
    let vectors = device.vectors();
    if let Some(path) = &args.control {
        control::serve(path, device.shared().clone(), args.socket_mode)?;
    }
    let listener = control::listen(&args.socket, args.socket_mode)?;
    let server = Server::new(VfioDevice::regions(), VfioDevice::irq_infos(vectors));

    info!(
        "dmalab device {:04x}:{:04x} v{}.{}: {} queues, {} MSI-X vectors, {} bytes internal memory; listening on {}",
        abi::PCI_VENDOR_ID,
        abi::PCI_DEVICE_ID,
        abi::VERSION_MAJOR,
        abi::VERSION_MINOR,
        cfg.queues,
        vectors,
        cfg.internal_mem,
        args.socket.display()
    );
    let mut backend = VfioDevice::new(device, maps, irqs, log.clone());
    let result = server.serve_one(&listener, &mut backend);
    let _ = std::fs::remove_file(&args.socket);
    backend.device.shutdown();
    let c = log.counters.snapshot();
    info!(
        "client gone: {} descriptors, {} completions ({} ok, {} failed), {} interrupts, {} resets",
        c.descriptors, c.completions, c.completions_ok, c.completions_err, c.irqs, c.resets
    );
    if let Some(c) = &args.control {
        let _ = std::fs::remove_file(c);
    }
    result.map_err(|e| format!("vfio-user: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_timestamp_micros()
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("dmalab-device: {e}");
            ExitCode::FAILURE
        }
    }
}
