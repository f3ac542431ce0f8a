//! The gateway's children: config ConfigMap, Deployment, Service, PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, GRPCAction, HTTPGetAction, KeyToPath, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use voice_types::SecretKeyRef;

use super::owned_meta;
use crate::model::{
    CONFIG_HASH_ANNOTATION, Component, GATEWAY_GRPC_SERVICE_PORT, GATEWAY_METRICS_SERVICE_PORT,
    Validated,
};

/// Seconds the pod's termination grace exceeds the gateway's own shutdown grace, so the
/// kubelet never kills a gateway that is still draining streams.
pub const TERMINATION_GRACE_MARGIN: i64 = 15;
/// Where the gateway finds the external Riva's CA certificates (`spec.riva.external.tls`).
pub const RIVA_CA_DIR: &str = "/etc/voice-gateway/riva-ca";
/// The CA file's name in [`RIVA_CA_DIR`], whatever the Secret's key.
const RIVA_CA_FILE: &str = "ca.crt";
/// UID/GID the gateway runs as (distroless "nonroot").
const NON_ROOT: i64 = 65532;
/// The gateway's readiness endpoint on its metrics port: 200 only while its backends answer.
const READINESS_PATH: &str = "/readyz";

/// The gateway's runtime configuration, under the environment names of the seed's gateway
/// (`envFrom` in the Deployment), so the seed's gateway image runs unchanged.
pub fn build_gateway_config(v: &Validated) -> ConfigMap {
    let g = &v.spec.gateway;
    let l = &v.spec.llm;
    let mut data = BTreeMap::from([
        ("RIVA_URI".to_string(), v.riva_uri.clone()),
        ("LLM_SERVICE_URL".into(), l.url.clone()),
        ("LLM_MODEL".into(), l.model.clone()),
        ("LLM_TEMPERATURE".into(), l.temperature.to_string()),
        ("LLM_MAX_TOKENS".into(), l.max_tokens.to_string()),
        ("LLM_SYSTEM_PROMPT".into(), l.system_prompt.clone()),
        ("GRPC_PORT".into(), g.grpc_port.to_string()),
        ("METRICS_PORT".into(), g.metrics_port.to_string()),
        (
            "SHUTDOWN_GRACE_PERIOD".into(),
            g.shutdown_grace_period_seconds.to_string(),
        ),
        (
            "MAX_CONCURRENT_STREAMS".into(),
            g.max_concurrent_streams.to_string(),
        ),
        ("LOG_LEVEL".into(), g.log_level.as_str().into()),
        ("ASR_LANGUAGE".into(), g.asr.language.clone()),
        ("ASR_SAMPLE_RATE".into(), g.asr.sample_rate.to_string()),
        ("TTS_VOICE".into(), g.tts.voice.clone()),
        ("TTS_SAMPLE_RATE".into(), g.tts.sample_rate.to_string()),
    ]);
    if let Some(tls) = v.spec.riva.external.as_ref().and_then(|e| e.tls.as_ref()) {
        data.insert("RIVA_USE_TLS".into(), "true".into());
        if tls.ca_secret_ref.is_some() {
            data.insert(
                "RIVA_SSL_CERT".into(),
                format!("{RIVA_CA_DIR}/{RIVA_CA_FILE}"),
            );
        }
    }
    ConfigMap {
        metadata: owned_meta(v, Component::Gateway, v.child_name(Component::Gateway)),
        data: Some(data),
        ..Default::default()
    }
}

/// The Secret keys the gateway reads: the LLM API key, the external Riva's metadata and CA.
fn secret_refs(v: &Validated) -> [(&'static str, Option<&SecretKeyRef>); 3] {
    let external = v.spec.riva.external.as_ref();
    [
        ("llm-api-key", v.spec.llm.api_key_secret_ref.as_ref()),
        (
            "riva-metadata",
            external.and_then(|e| e.metadata_secret_ref.as_ref()),
        ),
        (
            "riva-ca",
            external
                .and_then(|e| e.tls.as_ref())
                .and_then(|t| t.ca_secret_ref.as_ref()),
        ),
    ]
}

/// Hash of everything the gateway reads at start that is not in its pod template: the config
/// ConfigMap's data and the Secret references. Set on the pod template, so a change rolls the
/// pods. (A change inside a Secret itself does not: rotate by naming a new key.)
pub fn config_hash(config: &ConfigMap, v: &Validated) -> String {
    let mut h = Sha256::new();
    for (k, val) in config.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(val.as_bytes());
        h.update([0]);
    }
    for (what, s) in secret_refs(v) {
        if let Some(s) = s {
            h.update(format!("{what}:{}/{}", s.name, s.key).as_bytes());
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The gateway Deployment.
pub fn build_gateway_deployment(v: &Validated, config_hash: &str) -> Deployment {
    let g = &v.spec.gateway;
    let name = v.child_name(Component::Gateway);
    let [(_, api_key), (_, riva_metadata), (_, riva_ca)] = secret_refs(v);
    let from_secret = |name: &str, s: &SecretKeyRef| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.name.clone(),
                key: s.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let env: Vec<EnvVar> = [("LLM_API_KEY", api_key), ("RIVA_METADATA", riva_metadata)]
        .into_iter()
        .filter_map(|(name, s)| Some(from_secret(name, s?)))
        .collect();
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut volume_mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if let Some(ca) = riva_ca {
        volumes.push(Volume {
            name: "riva-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: RIVA_CA_FILE.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        volume_mounts.push(VolumeMount {
            name: "riva-ca".into(),
            mount_path: RIVA_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let http_probe = |path: &str, period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let container = Container {
        name: "gateway".into(),
        image: Some(g.image.clone()),
        image_pull_policy: g.image_pull_policy.map(|p| p.as_str().into()),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: g.grpc_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: g.metrics_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: name.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources: Some(g.resources.clone()),
        // Started once its gRPC health (service "") says SERVING: the process serves.
        // Ready only while `/readyz` is 200, which the gateway answers only while Riva and the
        // LLM answer its checks (503 with the reason otherwise): a rollout with a wrong LLM URL
        // or API key stops before it replaces working pods. The gRPC service "" would not do:
        // it is SERVING whatever the backends say. (HTTP, like liveness, so that the seed's
        // gateway image, whose Prometheus client answers every path, runs too.) Restarted when
        // its HTTP liveness fails.
        startup_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: g.grpc_port,
                service: None,
            }),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            timeout_seconds: Some(2),
            ..Default::default()
        }),
        readiness_probe: Some(http_probe(READINESS_PATH, 5, 3)),
        liveness_probe: Some(http_probe("/livez", 10, 3)),
        security_context: Some(restricted_container_context()),
        volume_mounts: Some(volume_mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Deployment {
        metadata: owned_meta(v, Component::Gateway, name),
        spec: Some(DeploymentSpec {
            replicas: Some(g.replicas),
            selector: LabelSelector {
                match_labels: Some(v.selector_labels(Component::Gateway)),
                ..Default::default()
            },
            // Never fewer serving pods than desired during a rollout: calls are long-lived.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(v.labels(Component::Gateway)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        config_hash.into(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(
                        i64::from(g.shutdown_grace_period_seconds) + TERMINATION_GRACE_MARGIN,
                    ),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT),
                        run_as_group: Some(NON_ROOT),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    node_selector: g.node_selector.clone(),
                    tolerations: g.tolerations.clone(),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Non-root, read-only root filesystem, no capabilities, no privilege escalation.
pub(super) fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The gateway Service: `grpc` 50051 and `metrics` 8080, whatever the container ports.
pub fn build_gateway_service(v: &Validated) -> Service {
    Service {
        metadata: owned_meta(v, Component::Gateway, v.child_name(Component::Gateway)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(v.selector_labels(Component::Gateway)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: GATEWAY_GRPC_SERVICE_PORT,
                    target_port: Some(IntOrString::String("grpc".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("kubernetes.io/h2c".into()),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: GATEWAY_METRICS_SERVICE_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PodDisruptionBudget allowing one voluntary disruption at a time, when replicas > 1.
pub fn build_gateway_pdb(v: &Validated) -> Option<PodDisruptionBudget> {
    (v.spec.gateway.replicas > 1).then(|| PodDisruptionBudget {
        metadata: owned_meta(v, Component::Gateway, v.child_name(Component::Gateway)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(v.selector_labels(Component::Gateway)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::build;
    use crate::model::validate;
    use crate::testdata;

    fn env_names(c: &ConfigMap) -> Vec<&str> {
        c.data
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn config_uses_the_seed_environment_names() {
        let v = validate(&testdata::external()).unwrap();
        let c = build_gateway_config(&v);
        for k in [
            "RIVA_URI",
            "LLM_SERVICE_URL",
            "GRPC_PORT",
            "METRICS_PORT",
            "SHUTDOWN_GRACE_PERIOD",
            "LOG_LEVEL",
            "ASR_LANGUAGE",
            "ASR_SAMPLE_RATE",
            "LLM_MODEL",
            "LLM_TEMPERATURE",
            "LLM_MAX_TOKENS",
            "LLM_SYSTEM_PROMPT",
            "TTS_VOICE",
            "TTS_SAMPLE_RATE",
            "MAX_CONCURRENT_STREAMS",
        ] {
            assert!(env_names(&c).contains(&k), "missing {k}");
        }
        let d = c.data.unwrap();
        assert_eq!(d["RIVA_URI"], "riva-api.riva.svc:50051");
        assert_eq!(d["GRPC_PORT"], "50051");
        assert_eq!(d["LLM_TEMPERATURE"], "0.7");
        assert_eq!(d["SHUTDOWN_GRACE_PERIOD"], "10");
    }

    #[test]
    fn deployment_is_hardened_and_probed() {
        let v = validate(&testdata::external_full()).unwrap();
        let d = build(&v).gateway_deployment;
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(
            pod.security_context.unwrap().seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        // Ready only while the gateway's /readyz says its backends answer; started once
        // its gRPC server serves.
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("metrics".into()));
        assert_eq!(
            c.startup_probe
                .as_ref()
                .unwrap()
                .grpc
                .as_ref()
                .unwrap()
                .port,
            50051
        );
        // Shutdown grace 20 s in this example: the pod gets more.
        assert!(pod.termination_grace_period_seconds.unwrap() > 20);
        let key = &c.env.as_ref().unwrap()[0];
        assert_eq!(key.name, "LLM_API_KEY");
        assert_eq!(
            key.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "llm-api-key"
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let mut vp = testdata::external();
        let hash = |vp: &voice_types::VoicePipeline| {
            let d = build(&validate(vp).unwrap()).gateway_deployment;
            d.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let before = hash(&vp);
        assert_eq!(before, hash(&vp));
        vp.spec.llm.system_prompt = "Be terse.".into();
        assert_ne!(before, hash(&vp));
        // Naming another Secret key for the Riva metadata rolls the pods too.
        let with_metadata = |key: &str| {
            let mut vp = vp.clone();
            vp.spec.riva.external.as_mut().unwrap().metadata_secret_ref = Some(SecretKeyRef {
                name: "nvcf".into(),
                key: key.into(),
            });
            hash(&vp)
        };
        assert_ne!(with_metadata("v1"), with_metadata("v2"));
    }

    #[test]
    fn an_external_riva_over_tls_gets_its_ca_and_metadata_from_secrets() {
        let mut vp = testdata::external();
        let plain = validate(&vp).unwrap();
        let config = build_gateway_config(&plain).data.unwrap();
        assert!(!config.contains_key("RIVA_USE_TLS") && !config.contains_key("RIVA_SSL_CERT"));
        let ext = vp.spec.riva.external.as_mut().unwrap();
        ext.tls = Some(voice_types::RivaTls {
            ca_secret_ref: Some(SecretKeyRef {
                name: "riva-tls".into(),
                key: "ca.crt".into(),
            }),
        });
        ext.metadata_secret_ref = Some(SecretKeyRef {
            name: "nvcf".into(),
            key: "metadata".into(),
        });
        let v = validate(&vp).unwrap();
        let config = build_gateway_config(&v).data.unwrap();
        assert_eq!(config["RIVA_USE_TLS"], "true");
        assert_eq!(config["RIVA_SSL_CERT"], "/etc/voice-gateway/riva-ca/ca.crt");
        let pod = build(&v)
            .gateway_deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let c = &pod.containers[0];
        let metadata = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "RIVA_METADATA")
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .expect("RIVA_METADATA from the Secret");
        assert_eq!(
            (metadata.name.as_str(), metadata.key.as_str()),
            ("nvcf", "metadata")
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "riva-ca")
            .expect("the CA mounted");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (RIVA_CA_DIR, Some(true))
        );
        let secret = pod
            .volumes
            .iter()
            .flatten()
            .find(|vol| vol.name == "riva-ca")
            .and_then(|vol| vol.secret.as_ref())
            .expect("the CA's volume");
        assert_eq!(secret.secret_name.as_deref(), Some("riva-tls"));
        let item = &secret.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("ca.crt", "ca.crt")
        );

        // `tls: {}`: TLS with the public roots, no CA file.
        vp.spec.riva.external.as_mut().unwrap().tls = Some(Default::default());
        let config = build_gateway_config(&validate(&vp).unwrap()).data.unwrap();
        assert_eq!(config["RIVA_USE_TLS"], "true");
        assert!(!config.contains_key("RIVA_SSL_CERT"));
    }

    #[test]
    fn service_exposes_grpc_and_metrics() {
        let s = build_gateway_service(&validate(&testdata::external()).unwrap());
        let ports: Vec<_> = s
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("grpc".to_string(), 50051), ("metrics".to_string(), 8080)]
        );
    }

    #[test]
    fn pdb_only_with_more_than_one_replica() {
        let mut vp = testdata::external();
        assert!(build_gateway_pdb(&validate(&vp).unwrap()).is_none());
        vp.spec.gateway.replicas = 3;
        assert!(build_gateway_pdb(&validate(&vp).unwrap()).is_some());
    }
}
