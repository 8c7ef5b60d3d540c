//! `cpu_usage`, `memory_usage` and `gpu_usage`, in percent.
//!
//! - Embedded in an app that runs in a container (the process sees its own
//!   cgroup v2 namespace, i.e. `/proc/self/cgroup` says `0::/`), or with
//!   `agent.resources: cgroup`:
//!   the cgroup's usage over its limits (`cpu.max`, `memory.max`), or over
//!   the host's capacity where a limit is `max`. Memory is the working set
//!   (`memory.current - inactive_file`), as the kubelet counts it.
//! - Otherwise, or with `agent.resources: host`: the whole host (sysinfo).
//!   The `roster agent` sidecar resolves `auto` to `host`: its own cgroup is
//!   the sidecar container's, and the app's is not visible from it.
//! - GPU: NVML, loaded at run time (`libnvidia-ml.so.1`) when a driver is
//!   present, averaged over the visible devices; 0.0 otherwise.
//!
//! Samples are taken on demand, at most once per [`SAMPLE_MIN_INTERVAL`];
//! CPU is the average since the previous sample.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sysinfo::System;

use crate::config::ResourceMode;

/// Samples closer together than this reuse the last one.
pub const SAMPLE_MIN_INTERVAL: Duration = Duration::from_secs(1);

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One sample, in percent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub gpu_usage: f64,
}

/// `memory.max` and friends: `Some(None)` for "max" (no limit),
/// `Some(Some(n))` for a number, `None` for anything else.
pub fn parse_limit(text: &str) -> Option<Option<u64>> {
    let t = text.trim();
    if t == "max" {
        return Some(None);
    }
    t.parse().ok().map(Some)
}

/// `cpu.max` ("QUOTA PERIOD") as cores: `Some(None)` for "max PERIOD".
pub fn parse_cpu_max(text: &str) -> Option<Option<f64>> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" {
        return Some(None);
    }
    let quota: f64 = quota.parse().ok()?;
    (period > 0.0 && quota > 0.0).then_some(Some(quota / period))
}

/// A `key value` line of `cpu.stat` or `memory.stat`.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// The cgroup v2 path of this process from `/proc/self/cgroup`.
pub fn cgroup_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// Working set over the limit (or host memory), percent.
pub fn memory_percent(current: u64, inactive_file: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 0.0;
    }
    let used = current.saturating_sub(inactive_file);
    (used as f64 / limit as f64 * 100.0).clamp(0.0, 100.0)
}

/// CPU time used over `elapsed` on `cores` cores, percent.
pub fn cpu_percent(used_usec: u64, elapsed: Duration, cores: f64) -> f64 {
    let wall = elapsed.as_secs_f64() * 1e6 * cores;
    if wall <= 0.0 {
        return 0.0;
    }
    (used_usec as f64 / wall * 100.0).clamp(0.0, 100.0)
}

/// Round to one decimal, as the seed shows them.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

enum Source {
    Host,
    Cgroup(PathBuf),
}

enum Gpu {
    Absent,
    Nvml(Box<nvml_wrapper::Nvml>),
}

/// Takes [`Resources`] samples.
pub struct Sampler {
    source: Source,
    /// None when sysinfo cannot read this platform: host numbers are 0.
    sys: Option<System>,
    host_cores: f64,
    host_memory: u64,
    prev_cpu: Option<(Instant, u64)>,
    last: Option<(Instant, Resources)>,
    gpu: Gpu,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn cgroup_dir(mode: ResourceMode) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup_v2_path(&text)?;
    let dir = match mode {
        ResourceMode::Host => return None,
        // A namespace root means a container; elsewhere it's a host slice.
        ResourceMode::Auto if path != "/" => return None,
        _ => Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')),
    };
    dir.join("memory.current").exists().then_some(dir)
}

impl Sampler {
    /// Detect the source and load NVML if present; may block briefly.
    pub fn new(mode: ResourceMode) -> Self {
        let source = match cgroup_dir(mode) {
            Some(d) => Source::Cgroup(d),
            None => {
                if mode == ResourceMode::Cgroup {
                    tracing::warn!("no cgroup v2 found: cpu/memory are the host's");
                }
                Source::Host
            }
        };
        let mut sys = System::new().ok();
        if let Some(sys) = sys.as_mut() {
            sys.refresh_memory();
            sys.refresh_cpu_usage();
        }
        let host_cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let gpu = match nvml_wrapper::Nvml::init() {
            Ok(n) => {
                tracing::info!(devices = n.device_count().unwrap_or(0), "NVML loaded");
                Gpu::Nvml(Box::new(n))
            }
            Err(e) => {
                tracing::debug!(error = %e, "no NVML: gpu_usage is 0.0");
                Gpu::Absent
            }
        };
        let mut s = Self {
            source,
            host_memory: sys.as_ref().map_or(0, System::total_memory),
            sys,
            host_cores,
            prev_cpu: None,
            last: None,
            gpu,
        };
        s.prev_cpu = s.cgroup_cpu_usage().map(|u| (Instant::now(), u));
        s
    }

    /// Where the numbers come from, for the start-up log.
    pub fn describe(&self) -> String {
        let gpu = match self.gpu {
            Gpu::Absent => "no GPU",
            Gpu::Nvml(_) => "NVML",
        };
        match &self.source {
            Source::Host => format!("host, {gpu}"),
            Source::Cgroup(d) => {
                let mem = read(d, "memory.max")
                    .and_then(|t| parse_limit(&t))
                    .flatten();
                let cpu = read(d, "cpu.max").and_then(|t| parse_cpu_max(&t)).flatten();
                format!(
                    "cgroup v2 {} (memory limit {}, cpu limit {}), {gpu}",
                    d.display(),
                    mem.map_or("none: host".into(), |m| format!("{m} bytes")),
                    cpu.map_or("none: host".into(), |c| format!("{c} cores")),
                )
            }
        }
    }

    fn cgroup_cpu_usage(&self) -> Option<u64> {
        match &self.source {
            Source::Cgroup(d) => parse_keyed(&read(d, "cpu.stat")?, "usage_usec"),
            Source::Host => None,
        }
    }

    /// A sample; the previous one when it is younger than
    /// [`SAMPLE_MIN_INTERVAL`].
    pub fn sample(&mut self) -> Resources {
        if let Some((at, r)) = self.last
            && at.elapsed() < SAMPLE_MIN_INTERVAL
        {
            return r;
        }
        let (cpu, memory) = match &self.source {
            Source::Host => match self.sys.as_mut() {
                Some(sys) => {
                    sys.refresh_cpu_usage();
                    sys.refresh_memory();
                    let total = sys.total_memory();
                    let mem = if total == 0 {
                        0.0
                    } else {
                        sys.used_memory() as f64 / total as f64 * 100.0
                    };
                    (f64::from(sys.global_cpu_usage()), mem)
                }
                None => (0.0, 0.0),
            },
            Source::Cgroup(d) => {
                let d = d.clone();
                let mem = match read(&d, "memory.current").and_then(|t| parse_limit(&t)) {
                    Some(Some(current)) => {
                        let limit = read(&d, "memory.max")
                            .and_then(|t| parse_limit(&t))
                            .flatten()
                            .unwrap_or(self.host_memory);
                        let inactive = read(&d, "memory.stat")
                            .and_then(|t| parse_keyed(&t, "inactive_file"))
                            .unwrap_or(0);
                        memory_percent(current, inactive, limit)
                    }
                    _ => 0.0,
                };
                let cores = read(&d, "cpu.max")
                    .and_then(|t| parse_cpu_max(&t))
                    .flatten()
                    .unwrap_or(self.host_cores);
                let now = Instant::now();
                let cpu = match (self.cgroup_cpu_usage(), self.prev_cpu) {
                    (Some(u), Some((at, prev))) => {
                        cpu_percent(u.saturating_sub(prev), now - at, cores)
                    }
                    _ => 0.0,
                };
                self.prev_cpu = self.cgroup_cpu_usage().map(|u| (now, u));
                (cpu, mem)
            }
        };
        let r = Resources {
            cpu_usage: round1(cpu),
            memory_usage: round1(memory),
            gpu_usage: round1(self.gpu_usage()),
        };
        self.last = Some((Instant::now(), r));
        r
    }

    fn gpu_usage(&self) -> f64 {
        let Gpu::Nvml(nvml) = &self.gpu else {
            return 0.0;
        };
        let n = nvml.device_count().unwrap_or(0);
        let used: Vec<f64> = (0..n)
            .filter_map(|i| nvml.device_by_index(i).ok())
            .filter_map(|d| d.utilization_rates().ok())
            .map(|u| f64::from(u.gpu))
            .collect();
        if used.is_empty() {
            0.0
        } else {
            used.iter().sum::<f64>() / used.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_fixtures() {
        assert_eq!(parse_limit("max\n"), Some(None));
        assert_eq!(parse_limit("536870912\n"), Some(Some(536_870_912)));
        assert_eq!(parse_limit("12345"), Some(Some(12345)));
        assert_eq!(parse_limit("lots"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn cpu_max_fixtures() {
        assert_eq!(parse_cpu_max("max 100000\n"), Some(None));
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(Some(2.0)));
        assert_eq!(parse_cpu_max("50000 100000"), Some(Some(0.5)));
        assert_eq!(parse_cpu_max("max"), Some(None));
        assert_eq!(parse_cpu_max("x 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn stat_fixtures() {
        let cpu_stat = "usage_usec 8120341\nuser_usec 5000000\nsystem_usec 3120341\n\
                        nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(parse_keyed(cpu_stat, "usage_usec"), Some(8_120_341));
        let memory_stat = "anon 1048576\nfile 4194304\nactive_file 1048576\n\
                           inactive_file 3145728\nunevictable 0\n";
        assert_eq!(parse_keyed(memory_stat, "inactive_file"), Some(3_145_728));
        assert_eq!(parse_keyed(memory_stat, "inactive"), None);
        assert_eq!(parse_keyed(memory_stat, "missing"), None);
    }

    #[test]
    fn proc_self_cgroup_fixtures() {
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(
            cgroup_v2_path("0::/kubepods/burstable/pod1/abc\n"),
            Some("/kubepods/burstable/pod1/abc")
        );
        // Hybrid v1 host: the unified line is there, the v1 lines are not ours.
        assert_eq!(cgroup_v2_path("4:memory:/x\n1:cpu:/\n0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn percentages() {
        // 512 MiB limit, 300 MiB current of which 44 MiB inactive cache → 50%.
        let mib = 1 << 20;
        assert_eq!(memory_percent(300 * mib, 44 * mib, 512 * mib), 50.0);
        assert_eq!(
            memory_percent(10, 20, 100),
            0.0,
            "cache larger than current"
        );
        assert_eq!(memory_percent(10, 0, 0), 0.0, "no limit known");
        assert_eq!(memory_percent(200, 0, 100), 100.0, "clamped");
        // Half a core used for one second on a 0.5-core limit: 100%.
        assert_eq!(cpu_percent(500_000, Duration::from_secs(1), 0.5), 100.0);
        // 0.3 s of CPU over 2 s on 2 cores: 7.5%.
        assert!((cpu_percent(300_000, Duration::from_secs(2), 2.0) - 7.5).abs() < 1e-9);
        assert_eq!(cpu_percent(1, Duration::ZERO, 1.0), 0.0);
    }

    #[test]
    fn sampler_works_on_this_machine() {
        let mut s = Sampler::new(ResourceMode::Auto);
        std::thread::sleep(Duration::from_millis(250));
        s.last = None;
        let r = s.sample();
        assert!((0.0..=100.0).contains(&r.cpu_usage), "{r:?}");
        assert!(r.memory_usage > 0.0 && r.memory_usage <= 100.0, "{r:?}");
        assert!((0.0..=100.0).contains(&r.gpu_usage), "{r:?}");
        assert!(!s.describe().is_empty());
        let host = Sampler::new(ResourceMode::Host);
        assert!(host.describe().starts_with("host"));
    }
}
