//! Riva's children, when managed: Deployment on GPU nodes and Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, GRPCAction,
    HTTPGetAction, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::owned_meta;
use crate::model::{
    Component, RIVA_GRPC_PORT, RIVA_HTTP_PORT, RIVA_METRICS_PORT, RIVA_TRITON_GRPC_PORT, Validated,
};

/// Seconds between startup probes; the failure threshold is derived from the spec's timeout.
const STARTUP_PERIOD: i32 = 10;

/// Riva's ports: name, number.
const PORTS: [(&str, i32); 4] = [
    ("grpc", RIVA_GRPC_PORT),
    ("http", RIVA_HTTP_PORT),
    ("triton-grpc", RIVA_TRITON_GRPC_PORT),
    ("metrics", RIVA_METRICS_PORT),
];

/// The Riva Deployment, when managed.
pub fn build_riva_deployment(v: &Validated) -> Option<Deployment> {
    let r = v.spec.riva.managed.as_ref()?;
    let mut resources: ResourceRequirements = r.resources.clone();
    // Extended resources: the limit alone is enough (the request defaults to it).
    resources.limits.get_or_insert_with(BTreeMap::new).insert(
        r.gpu.resource_name.clone(),
        Quantity(r.gpu.count.to_string()),
    );
    if let Some(req) = resources.requests.as_mut() {
        req.remove(&r.gpu.resource_name);
    }
    let container = Container {
        name: "riva".into(),
        image: Some(r.image.clone()),
        image_pull_policy: r.image_pull_policy.map(|p| p.as_str().into()),
        command: Some(vec!["start-riva".into()]),
        args: Some(vec![
            format!("--riva-uri=0.0.0.0:{RIVA_GRPC_PORT}"),
            "--asr_service=true".into(),
            "--tts_service=true".into(),
            "--nlp_service=false".into(),
        ]),
        ports: Some(
            PORTS
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some((*n).into()),
                    container_port: *p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        env: Some(vec![EnvVar {
            name: "NGC_API_KEY".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.ngc_api_key_secret_ref.name.clone(),
                    key: r.ngc_api_key_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        resources: Some(resources),
        // Model loading takes 20–60 minutes: liveness and readiness wait for this probe.
        startup_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: RIVA_GRPC_PORT,
                service: None,
            }),
            period_seconds: Some(STARTUP_PERIOD),
            failure_threshold: Some(
                (r.startup_timeout_seconds + STARTUP_PERIOD - 1) / STARTUP_PERIOD,
            ),
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: RIVA_GRPC_PORT,
                service: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/v2/health/live".into()),
                port: IntOrString::String("http".into()),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(15),
            failure_threshold: Some(4),
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        // The Riva image runs as root and writes below its root filesystem.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "models".into(),
                mount_path: "/data".into(),
                sub_path: r.model_repository.sub_path.clone(),
                ..Default::default()
            },
            VolumeMount {
                name: "dshm".into(),
                mount_path: "/dev/shm".into(),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Some(Deployment {
        metadata: owned_meta(v, Component::Riva, v.child_name(Component::Riva)),
        spec: Some(DeploymentSpec {
            replicas: Some(r.replicas),
            // Loading models is progress: do not report the rollout failed before it can end.
            progress_deadline_seconds: Some(r.startup_timeout_seconds + 600),
            selector: LabelSelector {
                match_labels: Some(v.selector_labels(Component::Riva)),
                ..Default::default()
            },
            // GPUs are scarce: replace one pod at a time instead of asking for a spare GPU.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(v.labels(Component::Riva)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector: Some(r.node_selector.clone()),
                    tolerations: Some(r.tolerations.clone()),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(vec![
                        Volume {
                            name: "models".into(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: r.model_repository.claim_name.clone(),
                                read_only: None,
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "dshm".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                medium: Some("Memory".into()),
                                size_limit: Some(r.shm_size.clone()),
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Riva Service, when managed: gRPC 50051, Triton HTTP 8000 and gRPC 8001, metrics 8002.
pub fn build_riva_service(v: &Validated) -> Option<Service> {
    v.spec.riva.managed.as_ref()?;
    Some(Service {
        metadata: owned_meta(v, Component::Riva, v.child_name(Component::Riva)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(v.selector_labels(Component::Riva)),
            ports: Some(
                PORTS
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        target_port: Some(IntOrString::String((*n).into())),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;
    use crate::testdata;

    #[test]
    fn riva_runs_on_gpu_with_shm_models_and_a_long_startup() {
        let d = build_riva_deployment(&validate(&testdata::managed()).unwrap()).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.present"],
            "true"
        );
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        let vols = pod.volumes.unwrap();
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "riva-models"
        );
        assert_eq!(
            vols[1].empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
        let sp = c.startup_probe.as_ref().unwrap();
        assert!(sp.period_seconds.unwrap() * sp.failure_threshold.unwrap() >= 3600);
        let ports: Vec<i32> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [50051, 8000, 8001, 8002]);
        assert_eq!(c.env.as_ref().unwrap()[0].name, "NGC_API_KEY");
    }

    #[test]
    fn gpu_resource_name_is_configurable() {
        let mut vp = testdata::managed();
        let m = vp.spec.riva.managed.as_mut().unwrap();
        m.gpu.resource_name = "nvidia.com/mig-3g.40gb".into();
        m.gpu.count = 2;
        let d = build_riva_deployment(&validate(&vp).unwrap()).unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/mig-3g.40gb"], Quantity("2".into()));
        assert!(!limits.contains_key("nvidia.com/gpu"));
    }
}
