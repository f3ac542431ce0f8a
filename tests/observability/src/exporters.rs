//! SIMULATED GPU exporters for the dashboard tests: Riva's Triton metrics endpoint (port 8002
//! in a Riva pod) and NVIDIA's dcgm-exporter cannot run here (no GPU, no NGC images), so this
//! serves, over plain HTTP on 127.0.0.1, the series they export with their names, types and
//! label sets (Triton: `model`, `version`, `gpu_uuid`; dcgm-exporter with Kubernetes pod
//! mapping: `gpu`, `UUID`, `device`, `modelName`, `Hostname`, and the `namespace`, `pod`,
//! `container` of the pod using the GPU). Every sample is made up: the counters grow at fixed
//! rates from the start, and every HELP line says "SIMULATED".
//!
//! What the tests learn from it is what the real Prometheus does with those label sets: that
//! the dashboard's queries select, join and aggregate them as written, and that a scrape with
//! `honor_labels: false` (the ServiceMonitor default) renames dcgm-exporter's `namespace` and
//! `pod` to `exported_namespace` and `exported_pod`, which the GPU selectors rely on.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A pod using a GPU, as dcgm-exporter's pod mapping reports it.
#[derive(Debug, Clone)]
pub struct GpuPod {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// GPU index on its node.
    pub gpu: u32,
}

/// What the simulated exporters serve.
#[derive(Debug, Clone)]
pub enum Exposition {
    /// Triton's metrics (as in a Riva pod): per model request counters and durations, and the
    /// GPU utilisation Triton reports.
    Triton {
        /// Model names (Riva's deployed models).
        models: Vec<String>,
    },
    /// dcgm-exporter's metrics for GPUs used by these pods.
    Dcgm {
        /// One GPU per pod.
        pods: Vec<GpuPod>,
    },
}

impl Exposition {
    /// The Prometheus text exposition `elapsed` after the start.
    pub fn render(&self, elapsed: Duration) -> String {
        let t = elapsed.as_secs_f64();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!(
                "# HELP {name} SIMULATED (test exporter, no GPU here): {help}\n# TYPE {name} {kind}\n"
            ));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        };
        match self {
            Self::Triton { models } => {
                let per_model = |rate: f64, scale: f64| -> Vec<(String, f64)> {
                    models
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let f = 1.0 + i as f64;
                            (
                                format!(r#"model="{m}",version="1""#),
                                (rate * f * t).floor() * scale,
                            )
                        })
                        .collect()
                };
                family(
                    "nv_inference_request_success",
                    "counter",
                    "Number of successful inference requests",
                    per_model(20.0, 1.0),
                );
                family(
                    "nv_inference_request_failure",
                    "counter",
                    "Number of failed inference requests",
                    per_model(0.5, 1.0),
                );
                family(
                    "nv_inference_exec_count",
                    "counter",
                    "Number of model executions performed",
                    per_model(10.0, 1.0),
                );
                family(
                    "nv_inference_request_duration_us",
                    "counter",
                    "Cumulative inference request duration in microseconds",
                    per_model(20.0, 3500.0),
                );
                family(
                    "nv_inference_queue_duration_us",
                    "counter",
                    "Cumulative inference queuing duration in microseconds",
                    per_model(20.0, 120.0),
                );
                family(
                    "nv_gpu_utilization",
                    "gauge",
                    "GPU utilization rate [0.0 - 1.0)",
                    vec![(
                        r#"gpu_uuid="GPU-5f7c0000-0000-0000-0000-000000000000""#.into(),
                        0.42,
                    )],
                );
            }
            Self::Dcgm { pods } => {
                let per_gpu = |value: &dyn Fn(u32) -> f64| -> Vec<(String, f64)> {
                    pods.iter()
                        .map(|p| {
                            (
                                format!(
                                    r#"gpu="{g}",UUID="GPU-5f7c0000-0000-0000-0000-00000000000{g}",device="nvidia{g}",modelName="NVIDIA A100-SXM4-80GB (SIMULATED)",Hostname="kwok-gpu-0",DCGM_FI_DRIVER_VERSION="550.54.15",container="riva",namespace="{ns}",pod="{pod}""#,
                                    g = p.gpu,
                                    ns = p.namespace,
                                    pod = p.pod
                                ),
                                value(p.gpu),
                            )
                        })
                        .collect()
                };
                family(
                    "DCGM_FI_DEV_GPU_UTIL",
                    "gauge",
                    "GPU utilization (in %).",
                    per_gpu(&|g| 55.0 + f64::from(g)),
                );
                family(
                    "DCGM_FI_DEV_MEM_COPY_UTIL",
                    "gauge",
                    "Memory utilization (in %).",
                    per_gpu(&|_| 20.0),
                );
                family(
                    "DCGM_FI_DEV_FB_USED",
                    "gauge",
                    "Framebuffer memory used (in MiB).",
                    per_gpu(&|g| 60_000.0 + 1000.0 * f64::from(g)),
                );
                family(
                    "DCGM_FI_DEV_FB_FREE",
                    "gauge",
                    "Framebuffer memory free (in MiB).",
                    per_gpu(&|g| 21_000.0 - 1000.0 * f64::from(g)),
                );
                family(
                    "DCGM_FI_DEV_POWER_USAGE",
                    "gauge",
                    "Power draw (in W).",
                    per_gpu(&|_| 250.0),
                );
                family(
                    "DCGM_FI_DEV_GPU_TEMP",
                    "gauge",
                    "GPU temperature (in C).",
                    per_gpu(&|_| 61.0),
                );
                family(
                    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
                    "gauge",
                    "Ratio of time the graphics engine is active.",
                    per_gpu(&|_| 0.5),
                );
                family(
                    "DCGM_FI_PROF_SM_ACTIVE",
                    "gauge",
                    "The ratio of cycles an SM has at least 1 warp assigned.",
                    per_gpu(&|_| 0.4),
                );
            }
        }
        out
    }
}

/// A simulated exporter serving `GET /metrics` on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct SimulatedExporter {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SimulatedExporter {
    /// Starts serving `exposition` on a free port.
    pub fn start(exposition: Exposition) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                // The rest of the request head.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", exposition.render(started.elapsed()))
                } else {
                    ("404 Not Found", String::new())
                };
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Self { port, stop })
    }
}

impl Drop for SimulatedExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_and_every_family_says_simulated() {
        let e = Exposition::Triton {
            models: vec!["asr".into(), "tts".into()],
        };
        let at = |s| e.render(Duration::from_secs(s));
        let value = |text: &str, series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse().ok())
                .expect(series)
        };
        let series = r#"nv_inference_request_success{model="tts",version="1"}"#;
        assert_eq!(value(&at(10), series), 400.0);
        assert!(value(&at(20), series) > value(&at(10), series));
        for text in [
            at(1),
            Exposition::Dcgm {
                pods: vec![GpuPod {
                    namespace: "voice".into(),
                    pod: "voice-riva-0".into(),
                    gpu: 0,
                }],
            }
            .render(Duration::ZERO),
        ] {
            let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
            assert!(helps > 0);
            assert_eq!(text.matches("SIMULATED (test exporter").count(), helps);
        }
    }
}
