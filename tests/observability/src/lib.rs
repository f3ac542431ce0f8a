//! Harness of the observability tests: renders the operator's PrometheusRule and dashboard
//! with the real `voice-operator render`, runs `promtool`, and starts Prometheus, the gateway,
//! the simulator and the operator as processes on 127.0.0.1 (killed on drop).
//!
//! Binaries, processes, ports and the simulator come from `test_support::processes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

pub use test_support::processes::{
    Bins, GatewayProcess, Proc, Sim, TempDir, bins, free_port, http_get, poll,
};
pub use test_support::repo_root;

pub mod exporters;

/// Every object `voice-operator render -f examples/<example> -n <namespace>` prints.
pub fn render(example: &str, namespace: &str) -> Vec<Yaml> {
    let out = Command::new(&bins().operator)
        .arg("render")
        .arg("-f")
        .arg(repo_root().join("examples").join(example))
        .args(["-n", namespace])
        .output()
        .expect("run voice-operator render");
    assert!(
        out.status.success(),
        "render {example} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

/// The documents of a multi-document YAML text (empty ones skipped).
pub fn yaml_documents(text: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// Reads the YAML documents of a repository file.
pub fn read_yaml_documents(rel: &str) -> Vec<Yaml> {
    let p = repo_root().join(rel);
    yaml_documents(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// The one object of `kind` among `docs`.
pub fn only_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// A promtool rule file (`groups:`) from a PrometheusRule's `spec.groups`.
pub fn rule_file(prometheus_rule: &Yaml) -> Yaml {
    let groups = prometheus_rule["spec"]["groups"].clone();
    assert!(
        groups.as_sequence().is_some_and(|g| !g.is_empty()),
        "no spec.groups"
    );
    let mut m = serde_yaml::Mapping::new();
    m.insert("groups".into(), groups);
    Yaml::Mapping(m)
}

/// The same rules without annotations: rule unit tests compare alerts by labels only, so
/// that rewording a runbook does not break them (`promtool check rules` checks the
/// annotation templates of the full file).
pub fn without_annotations(rules: &Yaml) -> Yaml {
    let mut r = rules.clone();
    for g in r["groups"].as_sequence_mut().into_iter().flatten() {
        for rule in g["rules"].as_sequence_mut().into_iter().flatten() {
            if let Some(m) = rule.as_mapping_mut() {
                m.remove("annotations");
            }
        }
    }
    r
}

/// Names of the alerts of a rule file.
pub fn alert_names(rules: &Yaml) -> Vec<String> {
    rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// Writes `value` as YAML to `path`.
pub fn write_yaml(path: &Path, value: &Yaml) {
    std::fs::write(path, serde_yaml::to_string(value).expect("YAML")).expect("write YAML");
}

/// Runs `promtool args…`.
pub fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool (Debian package `prometheus`; tools/deps.sh installs it)")
}

/// Runs promtool and fails with its output unless it succeeds.
pub fn promtool_ok(args: &[&str]) -> String {
    let out = promtool(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Checks a rule file with `promtool check rules`, then runs the unit tests of
/// `tests/observability/rules/<test_file>` against it (the test file names the rule file
/// `rules_name` in `rule_files`). Returns the alert names the test file exercises, each with
/// (fires in some case, silent in some case).
pub fn check_and_test_rules(
    rules: &Yaml,
    rules_name: &str,
    test_file: &str,
) -> Vec<(String, bool, bool)> {
    let dir = TempDir::new("obs-rules");
    let full = dir.join(&format!("full-{rules_name}"));
    write_yaml(&full, rules);
    promtool_ok(&["check", "rules", full.to_str().expect("utf-8 path")]);
    write_yaml(&dir.join(rules_name), &without_annotations(rules));
    let src = repo_root()
        .join("tests/observability/rules")
        .join(test_file);
    let text = std::fs::read_to_string(&src).expect("read rule test file");
    let test: Yaml = serde_yaml::from_str(&text).expect("rule test YAML");
    assert_eq!(
        test["rule_files"],
        Yaml::Sequence(vec![rules_name.into()]),
        "{test_file} must test {rules_name}"
    );
    let copy = dir.join(test_file);
    std::fs::write(&copy, &text).expect("copy test file");
    promtool_ok(&["test", "rules", copy.to_str().expect("utf-8 path")]);
    let mut seen: Vec<(String, bool, bool)> = vec![];
    for t in test["tests"].as_sequence().into_iter().flatten() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            let fires = a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty());
            match seen.iter_mut().find(|s| s.0 == name) {
                Some(s) => {
                    s.1 |= fires;
                    s.2 |= !fires;
                }
                None => seen.push((name, fires, !fires)),
            }
        }
    }
    seen
}

/// The dashboard JSON of a Grafana dashboard ConfigMap (its one data entry).
pub fn dashboard_of(config_map: &Yaml) -> Json {
    let data = config_map["data"].as_mapping().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "one dashboard per ConfigMap");
    let (k, v) = data.iter().next().expect("one entry");
    assert!(k.as_str().is_some_and(|k| k.ends_with(".json")), "{k:?}");
    serde_json::from_str(v.as_str().expect("string data")).expect("dashboard JSON")
}

/// Fails unless `d` is a dashboard Grafana imports: uid (at most 40 characters), title,
/// schemaVersion, a `datasource` variable of type datasource, panels with unique ids, a
/// type and a gridPos inside the 24 columns, and non-row panels with targets that have an
/// expr and unique refIds, on the `$datasource` variable.
pub fn assert_importable(d: &Json, ctx: &str) {
    let uid = d["uid"].as_str().expect("uid");
    assert!(!uid.is_empty() && uid.len() <= 40, "{ctx}: uid {uid:?}");
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{ctx}: title"
    );
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 27),
        "{ctx}: schemaVersion"
    );
    assert!(
        d.get("id").is_none_or(Json::is_null),
        "{ctx}: an imported dashboard has no id"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds_var = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap_or_else(|| panic!("{ctx}: no datasource variable"));
    assert_eq!(ds_var["type"], "datasource", "{ctx}");
    assert_eq!(ds_var["query"], "prometheus", "{ctx}");
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "{ctx}: no panels");
    let mut ids = vec![];
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx} {title}: no id"));
        assert!(!ids.contains(&id), "{ctx}: panel id {id} twice");
        ids.push(id);
        assert!(
            p["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{ctx} {title}: type"
        );
        let g = &p["gridPos"];
        let [x, _y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{ctx} {title}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{ctx} {title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        let ds = p["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(
            ds.contains("datasource"),
            "{ctx} {title}: datasource {ds:?}"
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{ctx} {title}: no targets"));
        let mut refs = vec![];
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{ctx} {title}: expr"
            );
            let r = t["refId"].as_str().expect("refId");
            assert!(!refs.contains(&r), "{ctx} {title}: refId {r} twice");
            refs.push(r);
            let tds = t["datasource"]["uid"].as_str().unwrap_or("${datasource}");
            assert!(
                tds.contains("datasource"),
                "{ctx} {title}: target datasource {tds:?}"
            );
        }
    }
}

/// Fails unless promtool parses every query (as the expression of a recording rule).
pub fn assert_queries_parse(qs: &[PanelQuery], ctx: &str) {
    let dir = TempDir::new("obs-dash-parse");
    let rules: Vec<Json> = qs
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query{i}"), "expr": q.expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let path = dir.join("queries.yaml");
    // JSON is YAML.
    std::fs::write(&path, file.to_string()).expect("write queries");
    let out = promtool_ok(&["check", "rules", path.to_str().expect("utf-8")]);
    assert!(
        out.contains(&format!("{} rules found", qs.len())),
        "{ctx}: {out}"
    );
}

/// A query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// Panel title.
    pub panel: String,
    /// Target refId.
    pub ref_id: String,
    /// PromQL as written in the dashboard.
    pub expr: String,
}

/// Every panel target of a dashboard (rows' nested panels included).
pub fn panel_queries(dashboard: &Json) -> Vec<PanelQuery> {
    fn walk(panels: &Json, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    panel: p["title"].as_str().unwrap_or_default().into(),
                    ref_id: t["refId"].as_str().unwrap_or_default().into(),
                    expr: t["expr"].as_str().unwrap_or_default().into(),
                });
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    out
}

/// Replaces Grafana variables (`$name`, `${name}`, `[[name]]`) by `values`; `$__rate_interval`
/// and `$__interval` become `rate_interval`. Fails if a variable is left.
pub fn substitute(expr: &str, values: &[(&str, &str)], rate_interval: &str) -> String {
    let mut s = expr.to_string();
    for (k, v) in [
        ("__rate_interval", rate_interval),
        ("__interval", rate_interval),
    ]
    .into_iter()
    .chain(values.iter().copied())
    {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("[[{k}]]"), v);
        // `$name` not followed by more of a name.
        let pat = format!("${k}");
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find(&pat) {
            let after = &rest[i + pat.len()..];
            out.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                out.push_str(&pat);
            } else {
                out.push_str(v);
            }
            rest = after;
        }
        out.push_str(rest);
        s = out;
    }
    assert!(!s.contains('$'), "unsubstituted variable in {s}");
    s
}

/// The metric names a PromQL expression reads: every name directly followed by a label
/// selector `{…}` (all the project's queries scope their series, so every metric has one).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    let b = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = expr[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |j| j + 1);
        let name = &expr[start..i];
        let quoted = start > 0 && b[start - 1] == b'"';
        if !name.is_empty() && !quoted && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// A running gateway (test-support's process) that `voice-client` can talk to.
#[derive(Debug)]
pub struct Gateway(pub GatewayProcess);

impl std::ops::Deref for Gateway {
    type Target = GatewayProcess;
    fn deref(&self) -> &GatewayProcess {
        &self.0
    }
}

impl Gateway {
    /// Starts `voice-gateway` against the simulator and waits until `/readyz` answers 200.
    pub fn start(sim: &Sim) -> anyhow::Result<Self> {
        GatewayProcess::with_sim(sim, &[]).map(Self)
    }

    /// One turn with `voice-client` (a WAV turn when `wav` is given, else a text turn).
    /// Returns whether the client succeeded.
    pub fn turn(&self, wav: Option<&Path>, text: &str) -> anyhow::Result<bool> {
        let mut cmd = Command::new(&bins().client);
        cmd.args(["--target", &format!("127.0.0.1:{}", self.grpc_port)]);
        match wav {
            Some(w) => cmd.arg("--wav").arg(w),
            None => cmd.args(["--text", text]),
        };
        let st = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run voice-client")?;
        Ok(st.success())
    }
}

/// Writes simulator speech saying `text` to `out` (`voice-sim speak`).
pub fn speak(text: &str, out: &Path) -> anyhow::Result<()> {
    let st = Command::new(&bins().sim)
        .args(["speak", "--text", text, "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(st.success(), "voice-sim speak failed");
    Ok(())
}

/// A scrape job of the test Prometheus: a job name, one target and its labels (what the
/// Prometheus Operator's ServiceMonitor relabelling puts on a target in a cluster).
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job` label.
    pub job: String,
    /// host:port.
    pub target: String,
    /// Extra target labels.
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus with a temporary storage dir, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    /// Process (dropped before the directory).
    pub proc: Proc,
    /// Web port.
    pub port: u16,
    /// Config and storage.
    pub dir: TempDir,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` on 127.0.0.1 with a 1 s scrape interval.
    pub fn start(jobs: &[ScrapeJob]) -> anyhow::Result<Self> {
        let dir = TempDir::new("obs-prometheus");
        let port = free_port();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for j in jobs {
            cfg.push_str(&format!(
                "  - job_name: {:?}\n    static_configs:\n      - targets: [{:?}]\n        labels:\n",
                j.job, j.target
            ));
            for (k, v) in &j.labels {
                cfg.push_str(&format!("          {k}: {v:?}\n"));
            }
        }
        let cfg_path = dir.join("prometheus.yml");
        std::fs::write(&cfg_path, &cfg)?;
        promtool_ok(&["check", "config", cfg_path.to_str().context("utf-8")?]);
        let bin = if Path::new("/usr/bin/prometheus").exists() {
            PathBuf::from("/usr/bin/prometheus")
        } else {
            PathBuf::from("prometheus")
        };
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn prometheus")?;
        let p = Self {
            proc: Proc(child),
            port,
            dir,
        };
        poll(Duration::from_secs(20), "prometheus /-/ready", || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        })?;
        Ok(p)
    }

    /// The server URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An instant query with `promtool query instant`: the result vector, or an error naming
    /// the query (parse errors included).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Json>> {
        let out = promtool(&["query", "instant", "-o", "json", &self.url(), expr]);
        ensure!(
            out.status.success(),
            "query {expr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Json = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("query {expr}: promtool output"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The Prometheus log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}
