//! libtorch's profiler (Kineto, the one `torch.profiler` drives), so that a step of lawa and a
//! step of PyTorch can be profiled alike: which operators ran on the host and, on CUDA, which
//! kernels ran on the device, and for how long.

use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{call, OpsError};

extern "C" {
    fn lawa_profiler_start(cuda: c_int, error: *mut *mut c_char) -> c_int;
    fn lawa_profiler_stop(
        trace_path: *const c_char,
        events: *mut *mut c_char,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// Where an event ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventDevice {
    /// A host operator (`aten::mm`...), timed from call to return, its callees included.
    Cpu,
    /// A CUDA kernel, copy or memset, timed on the device.
    Cuda,
}

/// One profiled event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfiledEvent {
    /// Where it ran.
    pub device: EventDevice,
    /// The operator's or kernel's name.
    pub name: String,
    /// When it started, in ns of the profiler's clock.
    pub start_ns: u64,
    /// How long it took, in ns.
    pub duration_ns: u64,
}

/// Whether a [`Profiler`] is running in this process (starting a second one would reset the
/// first one's trace inside Kineto).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A running profiler; [`Profiler::stop`] ends it and returns what it saw. Dropped without
/// `stop`, it stops and discards the events. One at a time per process (a second `start` is an
/// error), and it stays on the thread that started it (libtorch's profiler state is the
/// thread's).
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let profiler = lawa_ops::Profiler::start(false).unwrap();
/// let a = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
/// let _ = a.mm(&a);
/// let events = profiler.stop(None).unwrap();
/// assert!(events.iter().any(|e| e.name == "aten::mm"));
/// ```
#[derive(Debug)]
pub struct Profiler {
    running: bool,
    /// Not `Send`: stopping it from another thread would fail and leave this one profiled.
    _thread: PhantomData<*const ()>,
}

impl Profiler {
    /// Starts profiling this thread's operators and, with `cuda`, the device's kernels.
    pub fn start(cuda: bool) -> Result<Profiler, OpsError> {
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(OpsError {
                op: "profiler start",
                message: "a profiler is already running in this process".into(),
            });
        }
        let started = call("profiler start", |error| {
            // SAFETY: no pointers but the error slot.
            unsafe { lawa_profiler_start(c_int::from(cuda), error) }
        });
        if let Err(e) = started {
            RUNNING.store(false, Ordering::SeqCst);
            return Err(e);
        }
        Ok(Profiler {
            running: true,
            _thread: PhantomData,
        })
    }

    /// Stops profiling and returns the events; with `trace`, also writes a Chrome trace there
    /// (open it in Perfetto or chrome://tracing).
    pub fn stop(mut self, trace: Option<&Path>) -> Result<Vec<ProfiledEvent>, OpsError> {
        let trace = trace.map(|p| p.to_string_lossy().into_owned());
        // (On a bad path, Drop still stops the profiler.)
        let trace = CString::new(trace.unwrap_or_default()).map_err(|_| OpsError {
            op: "profiler stop",
            message: "the trace path holds a NUL byte".into(),
        })?;
        self.running = false;
        let mut text: *mut c_char = std::ptr::null_mut();
        let stopped = call("profiler stop", |error| {
            // SAFETY: `trace` lives across the call; `text` receives a malloc'ed string.
            unsafe { lawa_profiler_stop(trace.as_ptr(), &mut text, error) }
        });
        RUNNING.store(false, Ordering::SeqCst);
        stopped?;
        // SAFETY: the shim's malloc'ed string, handed over once.
        let text = unsafe { lawa_cxx::take_text(text) };
        parse_events(&text)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.running {
            let mut text: *mut c_char = std::ptr::null_mut();
            let _ = call("profiler stop", |error| {
                // SAFETY: an empty trace path; `text` receives a malloc'ed string.
                unsafe { lawa_profiler_stop(c"".as_ptr(), &mut text, error) }
            });
            // SAFETY: null or the shim's malloc'ed string, freed once.
            drop(unsafe { lawa_cxx::take_text(text) });
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
}

/// Events written one a line as [`ProfiledEvent::line`] writes them (lawa's profiler and the
/// PyTorch reference's alike).
pub fn parse_events(text: &str) -> Result<Vec<ProfiledEvent>, OpsError> {
    text.lines().map(parse_event).collect()
}

impl ProfiledEvent {
    /// The event as one line (no line break): device, start ns, duration ns and name, separated
    /// by tabs; [`parse_events`] reads it back.
    pub fn line(&self) -> String {
        let device = match self.device {
            EventDevice::Cpu => "cpu",
            EventDevice::Cuda => "cuda",
        };
        let name = self.name.replace(['\t', '\n', '\r'], " ");
        format!("{device}\t{}\t{}\t{name}", self.start_ns, self.duration_ns)
    }
}

/// One line of the shim's output: device, start, duration, name, separated by tabs.
fn parse_event(line: &str) -> Result<ProfiledEvent, OpsError> {
    let bad = || OpsError {
        op: "profiler stop",
        message: format!("unreadable event line {line:?}"),
    };
    let mut fields = line.splitn(4, '\t');
    let device = match fields.next() {
        Some("cpu") => EventDevice::Cpu,
        Some("cuda") => EventDevice::Cuda,
        _ => return Err(bad()),
    };
    let start_ns = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let duration_ns = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let name = fields.next().ok_or_else(bad)?.to_string();
    Ok(ProfiledEvent {
        device,
        name,
        start_ns,
        duration_ns,
    })
}

/// The total time of each event name on `device`, largest first, with how many times it ran.
pub fn totals_by_name(events: &[ProfiledEvent], device: EventDevice) -> Vec<(String, u64, usize)> {
    let mut by_name: HashMap<&str, (u64, usize)> = HashMap::new();
    for e in events.iter().filter(|e| e.device == device) {
        let entry = by_name.entry(&e.name).or_default();
        entry.0 += e.duration_ns;
        entry.1 += 1;
    }
    let mut out: Vec<(String, u64, usize)> = by_name
        .into_iter()
        .map(|(name, (ns, count))| (name.to_string(), ns, count))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// How long at least one event on `device` was running (the union of their intervals, so that
/// nested operators or concurrent kernels count once), in ns.
pub fn busy_ns(events: &[ProfiledEvent], device: EventDevice) -> u64 {
    let mut spans: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.device == device)
        .map(|e| (e.start_ns, e.start_ns.saturating_add(e.duration_ns)))
        .collect();
    spans.sort_unstable();
    let (mut busy, mut reach) = (0u64, 0u64);
    for (start, end) in spans {
        let from = start.max(reach);
        if end > from {
            busy += end - from;
        }
        reach = reach.max(end);
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn lines_parse_and_bad_lines_are_refused() {
        let e = parse_event("cuda\t5\t1200\tampere_bf16 gemm\twith tab").unwrap();
        assert_eq!(e.device, EventDevice::Cuda);
        assert_eq!((e.start_ns, e.duration_ns), (5, 1200));
        assert_eq!(e.name, "ampere_bf16 gemm\twith tab");
        assert!(parse_event("gpu\t1\t2\tx").is_err());
        assert!(parse_event("cpu\tx\t2\tx").is_err());
        assert!(parse_event("cpu\t1\t2").is_err());
    }

    #[test]
    fn busy_time_counts_overlaps_once() {
        let e = |device, start_ns, duration_ns| ProfiledEvent {
            device,
            name: "k".into(),
            start_ns,
            duration_ns,
        };
        let events = [
            e(EventDevice::Cuda, 100, 50), // 100..150
            e(EventDevice::Cuda, 120, 10), // inside it
            e(EventDevice::Cuda, 140, 30), // overlaps to 170
            e(EventDevice::Cuda, 200, 5),  // apart
            e(EventDevice::Cpu, 0, 1000),  // another device
        ];
        assert_eq!(busy_ns(&events, EventDevice::Cuda), 75);
        assert_eq!(busy_ns(&events, EventDevice::Cpu), 1000);
        let lines: Vec<String> = events.iter().map(ProfiledEvent::line).collect();
        assert_eq!(lines[0], "cuda\t100\t50\tk");
        assert_eq!(parse_events(&lines.join("\n")).unwrap(), events);
    }

    #[test]
    fn the_profiler_sees_each_operator_as_often_as_it_ran() {
        let a = Tensor::ones([128, 128], (Kind::Float, Device::Cpu));
        let profiler = Profiler::start(false).unwrap();
        for _ in 0..3 {
            let _ = a.mm(&a);
        }
        let _ = a.relu();
        let dir = std::env::temp_dir().join(format!("lawa-profiler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("trace.json");
        let events = profiler.stop(Some(&trace)).unwrap();
        let totals = totals_by_name(&events, EventDevice::Cpu);
        let count = |name: &str| totals.iter().find(|t| t.0 == name).map(|t| t.2);
        assert_eq!(count("aten::mm"), Some(3));
        assert_eq!(count("aten::relu"), Some(1));
        assert!(totals.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(events.iter().all(|e| e.device == EventDevice::Cpu));
        let trace = std::fs::read_to_string(&trace).unwrap();
        assert!(
            trace.contains("aten::mm"),
            "the Chrome trace names the operators"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // One at a time; after stop (or drop, or a bad trace path) a new one can start.
        let again = Profiler::start(false).unwrap();
        let second = Profiler::start(false).unwrap_err();
        assert!(second.message.contains("already running"), "{second}");
        drop(again);
        let bad = Profiler::start(false)
            .unwrap()
            .stop(Some(Path::new("a\0b")));
        assert!(bad.unwrap_err().message.contains("NUL"));
        assert!(Profiler::start(false).unwrap().stop(None).is_ok());
    }
}
