//! Bad specs are rejected at `kubectl apply`, by the CRD's schema and CEL rules, with a
//! message that says what is wrong. No operator runs here: the API server alone refuses them.

use operator_tests::{kubectl_apply, plane};

/// A pipeline named `name` with `spec` (YAML, indented by 2) in place of a valid one.
fn pipeline(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: voice.workflow.io/v1alpha1\nkind: VoicePipeline\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

const LLM: &str = "  llm: {url: \"http://llm.llm.svc:8000/v1\"}\n";
const RIVA: &str = "  riva: {external: {uri: \"riva.riva.svc:50051\"}}\n";

/// (what is wrong, manifest, text the error must contain)
fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "no riva at all",
            pipeline("no-riva", &format!("{LLM}  riva: {{}}\n")),
            "set exactly one of riva.managed",
        ),
        (
            "managed and external riva",
            pipeline(
                "both-riva",
                &format!(
                    "{LLM}  riva:\n    external: {{uri: \"riva:50051\"}}\n    managed: {{modelRepository: {{claimName: m}}, ngcApiKeySecretRef: {{name: ngc, key: k}}}}\n"
                ),
            ),
            "set exactly one of riva.managed",
        ),
        (
            "LLM URL without scheme",
            pipeline(
                "bad-url",
                &format!("  llm: {{url: \"llm.llm.svc:8000/v1\"}}\n{RIVA}"),
            ),
            "llm.url must start with http:// or https://",
        ),
        (
            "LLM URL with a query",
            pipeline(
                "query-url",
                &format!("  llm: {{url: \"http://llm:8000/v1?x=1\"}}\n{RIVA}"),
            ),
            "without query or fragment",
        ),
        (
            "missing llm",
            pipeline("no-llm", RIVA),
            "spec.llm: Required value",
        ),
        (
            "gpuSelector with braces (not bare label matchers)",
            pipeline(
                "gpu-braces",
                &format!(
                    "{LLM}{RIVA}  observability: {{prometheusRule: {{gpuSelector: '{{Hostname=\"gpu-1\"}}'}}}}\n"
                ),
            ),
            "gpuSelector must be PromQL label matchers",
        ),
        (
            "ASR language not a BCP-47 tag",
            pipeline(
                "language",
                &format!("{LLM}{RIVA}  gateway: {{asr: {{language: en_US}}}}\n"),
            ),
            "spec.gateway.asr.language in body should match",
        ),
        (
            "a ServiceMonitor label key that is not a label key",
            pipeline(
                "label-key",
                &format!(
                    "{LLM}{RIVA}  observability: {{serviceMonitor: {{labels: {{\"team name\": a}}}}}}\n"
                ),
            ),
            "keys must be label keys",
        ),
        (
            "a node selector value longer than a label value",
            pipeline(
                "label-value",
                &format!(
                    "{LLM}{RIVA}  gateway: {{nodeSelector: {{pool: {}}}}}\n",
                    "x".repeat(64)
                ),
            ),
            "may not be more than 63 bytes",
        ),
        (
            "too many tolerations",
            pipeline(
                "tolerations",
                &format!(
                    "{LLM}{RIVA}  gateway:\n    tolerations: [{}]\n",
                    vec!["{operator: Exists}"; 33].join(", ")
                ),
            ),
            "must have at most 32 items",
        ),
        (
            "gateway replicas out of range",
            pipeline(
                "replicas",
                &format!("{LLM}{RIVA}  gateway: {{replicas: 101}}\n"),
            ),
            "spec.gateway.replicas",
        ),
        (
            "negative replicas",
            pipeline(
                "neg-replicas",
                &format!("{LLM}{RIVA}  gateway: {{replicas: -1}}\n"),
            ),
            "should be greater than or equal to 0",
        ),
        (
            "privileged gRPC port",
            pipeline("port", &format!("{LLM}{RIVA}  gateway: {{grpcPort: 80}}\n")),
            "spec.gateway.grpcPort",
        ),
        (
            "same gRPC and metrics port",
            pipeline(
                "same-port",
                &format!("{LLM}{RIVA}  gateway: {{grpcPort: 9000, metricsPort: 9000}}\n"),
            ),
            "must differ",
        ),
        (
            "ASR sample rate too low",
            pipeline(
                "rate",
                &format!("{LLM}{RIVA}  gateway: {{asr: {{sampleRate: 4000}}}}\n"),
            ),
            "spec.gateway.asr.sampleRate",
        ),
        (
            "managed riva without NGC key secret",
            pipeline(
                "no-ngc",
                &format!("{LLM}  riva:\n    managed: {{modelRepository: {{claimName: m}}}}\n"),
            ),
            "ngcApiKeySecretRef: Required value",
        ),
        (
            "secret reference without key",
            pipeline(
                "no-key",
                &format!(
                    "  llm: {{url: \"http://llm:8000/v1\", apiKeySecretRef: {{name: s}}}}\n{RIVA}"
                ),
            ),
            "apiKeySecretRef.key: Required value",
        ),
        (
            "external riva without port",
            pipeline(
                "no-port",
                &format!("{LLM}  riva: {{external: {{uri: \"riva.riva.svc\"}}}}\n"),
            ),
            "spec.riva.external.uri",
        ),
        (
            "external riva port out of range",
            pipeline(
                "big-port",
                &format!("{LLM}  riva: {{external: {{uri: \"riva:70000\"}}}}\n"),
            ),
            "the port must be between 1 and 65535",
        ),
        (
            "error ratio above 1",
            pipeline(
                "ratio",
                &format!("{LLM}{RIVA}  observability: {{prometheusRule: {{errorRatio: 5}}}}\n"),
            ),
            "spec.observability.prometheusRule.errorRatio",
        ),
        (
            "scrape timeout longer than interval",
            pipeline(
                "timeout",
                &format!(
                    "{LLM}{RIVA}  observability: {{serviceMonitor: {{interval: 10s, scrapeTimeout: 30s}}}}\n"
                ),
            ),
            "scrapeTimeout must not be longer than",
        ),
        (
            "interval not a duration",
            pipeline(
                "interval",
                &format!("{LLM}{RIVA}  observability: {{serviceMonitor: {{interval: often}}}}\n"),
            ),
            "spec.observability.serviceMonitor.interval",
        ),
        (
            "GPU count zero",
            pipeline(
                "gpu",
                &format!(
                    "{LLM}  riva:\n    managed: {{gpu: {{count: 0}}, modelRepository: {{claimName: m}}, ngcApiKeySecretRef: {{name: ngc, key: k}}}}\n"
                ),
            ),
            "spec.riva.managed.gpu.count",
        ),
        (
            "startup timeout too short for model loading",
            pipeline(
                "startup",
                &format!(
                    "{LLM}  riva:\n    managed: {{startupTimeoutSeconds: 5, modelRepository: {{claimName: m}}, ngcApiKeySecretRef: {{name: ngc, key: k}}}}\n"
                ),
            ),
            "startupTimeoutSeconds",
        ),
        (
            "system prompt too long",
            pipeline(
                "prompt",
                &format!(
                    "  llm: {{url: \"http://llm:8000/v1\", systemPrompt: \"{}\"}}\n{RIVA}",
                    "x".repeat(16385)
                ),
            ),
            "spec.llm.systemPrompt: Too long",
        ),
        (
            "name too long for its children",
            pipeline(&format!("p{}", "x".repeat(55)), &format!("{LLM}{RIVA}")),
            "metadata.name must be a DNS-1035 label of at most 50",
        ),
        (
            "unknown log level",
            pipeline(
                "log",
                &format!("{LLM}{RIVA}  gateway: {{logLevel: verbose}}\n"),
            ),
            "spec.gateway.logLevel: Unsupported value",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_rejected_at_apply_with_a_clear_message() {
    let plane = plane();
    let ns = plane.namespace("bad-specs").await;
    let mut failures = vec![];
    let cases = cases();
    assert!(cases.len() >= 10);
    for (what, manifest, expected) in &cases {
        let out = kubectl_apply(plane, &ns.name, manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{what}: accepted"));
        } else if !stderr.contains(expected) {
            failures.push(format!("{what}: error lacks {expected:?}:\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad specs misjudged:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // And valid specs next to them are accepted: the minimal one, and the edges of the rules
    // above (several label matchers, a regex value).
    for (name, spec) in [
        ("good", format!("{LLM}{RIVA}")),
        (
            "good-labels",
            format!(
                "{LLM}{RIVA}  observability: {{prometheusRule: {{labels: {{example.com/team: voice-1, tier: ''}}}}}}\n"
            ),
        ),
        (
            "good-tls",
            format!(
                "{LLM}  riva:\n    external:\n      uri: grpc.nvcf.nvidia.com:443\n      tls: {{caSecretRef: {{name: riva-ca, key: ca.crt}}}}\n      metadataSecretRef: {{name: nvcf, key: metadata}}\n"
            ),
        ),
        (
            "good-multi",
            format!("{LLM}{RIVA}  gateway: {{asr: {{language: multi}}}}\n"),
        ),
        (
            "good-gpus",
            format!(
                "{LLM}{RIVA}  observability: {{prometheusRule: {{gpuSelector: 'Hostname=~\"gpu-node-\\\\d+\", gpu!=\"7\",'}}}}\n"
            ),
        ),
    ] {
        let out = kubectl_apply(plane, &ns.name, &pipeline(name, &spec));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `kubectl explain` reads the CRD's descriptions: the schema is the manual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_reads_as_the_manual() {
    let plane = plane();
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let explain = |path: &str| {
        let path = path.to_string();
        async move {
            for _ in 0..60 {
                let out = plane.kubectl_output(&["explain", &path, "--recursive"]);
                if out.status.success() {
                    return String::from_utf8_lossy(&out.stdout).into_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            panic!("kubectl explain {path} kept failing");
        }
    };
    let text = explain("voicepipeline.spec").await;
    for field in [
        "gateway",
        "llm",
        "riva",
        "observability",
        "startupTimeoutSeconds",
        "apiKeySecretRef",
        "scrapeTimeout",
    ] {
        assert!(text.contains(field), "explain lacks {field}:\n{text}");
    }
    let text = explain("voicepipeline.spec.riva.managed.startupTimeoutSeconds").await;
    assert!(text.contains("20–60 minutes on first start"), "{text}");
}
