//! The container images of `Dockerfile`, as far as a machine without a Docker engine (and
//! without the base images) can check them:
//! - every final stage is distroless `cc-debian12:nonroot`, runs as 65532, and its entrypoint is
//!   a binary the build stage produces from this workspace;
//! - the binaries need no shared library that distroless `cc-debian12` lacks, and no glibc
//!   newer than its 2.36;
//! - run as user 65532 in a root filesystem holding only what the image would (the binaries at
//!   their paths, the libraries of those packages, CA certificates, `/etc/passwd`), none of it
//!   writable: the operator prints its CRD, and the simulator, the gateway and the client from
//!   the gateway image carry a turn. Needs root for `chroot` (CI runs as root here).
//!
//! What is not checked: the build stage itself (`rust:1.95-bookworm`, the same `cargo build`
//! with `--release`) and the image layers; `docker build` needs an engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::processes::{GatewayProcess, Sim, TempDir, bins};
use test_support::repo_root;

const BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";
/// glibc of distroless `cc-debian12` (Debian 12).
const GLIBC: (u32, u32) = (2, 36);
/// Shared objects of distroless `cc-debian12`'s packages: libc6, libgcc-s1, libgomp1,
/// libstdc++6, libssl3.
const DISTROLESS_CC_LIBS: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libnss_dns.so.2",
    "libnss_files.so.2",
    "libgcc_s.so.1",
    "libgomp.so.1",
    "libstdc++.so.6",
    "libssl.so.3",
    "libcrypto.so.3",
];

/// A final stage of the Dockerfile.
#[derive(Debug, Default)]
struct Image {
    name: String,
    from: String,
    /// `COPY --from=build SRC DEST`.
    copies: Vec<(String, String)>,
    user: Option<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

/// The build stage's outputs (`/out/NAME`) and the final stages.
fn parse_dockerfile() -> (Vec<String>, Vec<Image>) {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    // Continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let mut outputs = vec![];
    let mut images: Vec<Image> = vec![];
    let json_list = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("exec form {rest}: {e}"))
    };
    for line in joined.lines().map(str::trim) {
        let (instr, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instr {
            "FROM" => {
                let (from, name) = rest.split_once(" AS ").expect("FROM image AS name");
                if name.trim() != "build" {
                    images.push(Image {
                        name: name.trim().into(),
                        from: from.trim().into(),
                        ..Image::default()
                    });
                }
            }
            "RUN" if images.is_empty() => {
                // `cp target/release/A target/release/B … /out/`
                if let Some(cp) = rest.split("&&").find(|c| c.trim().starts_with("cp ")) {
                    outputs.extend(
                        cp.split_whitespace()
                            .filter_map(|w| w.strip_prefix("target/release/"))
                            .map(str::to_string),
                    );
                }
            }
            "COPY" if !images.is_empty() => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(parts.len(), 3, "COPY --from=build SRC DEST: {line}");
                assert_eq!(parts[0], "--from=build", "{line}");
                let image = images.last_mut().expect("stage");
                image.copies.push((parts[1].into(), parts[2].into()));
            }
            "USER" => images.last_mut().expect("stage").user = Some(rest.trim().into()),
            "ENTRYPOINT" => images.last_mut().expect("stage").entrypoint = json_list(rest),
            "CMD" => images.last_mut().expect("stage").cmd = json_list(rest),
            _ => {}
        }
    }
    (outputs, images)
}

/// The binary of this workspace that `/out/NAME` is.
fn workspace_binary(src: &str) -> PathBuf {
    let name = src.strip_prefix("/out/").expect("copied from /out/");
    let b = bins();
    [&b.operator, &b.gateway, &b.sim, &b.client]
        .into_iter()
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .unwrap_or_else(|| panic!("{src} is not a binary of the workspace"))
        .clone()
}

#[test]
fn every_image_is_distroless_nonroot_with_a_built_entrypoint() {
    let (outputs, images) = parse_dockerfile();
    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["operator", "gateway", "sim"]);
    for image in &images {
        let n = &image.name;
        assert_eq!(image.from, BASE, "{n}: base image");
        assert_eq!(image.user.as_deref(), Some("65532:65532"), "{n}: USER");
        for (src, dest) in &image.copies {
            let name = src.strip_prefix("/out/").expect("from /out/");
            assert!(
                outputs.iter().any(|o| o == name),
                "{n}: {src} is not built by the build stage"
            );
            assert!(workspace_binary(src).is_file(), "{n}: {src}");
            assert!(dest.starts_with("/usr/local/bin/"), "{n}: {dest}");
        }
        let entry = image
            .entrypoint
            .first()
            .unwrap_or_else(|| panic!("{n}: ENTRYPOINT"));
        assert!(
            image.copies.iter().any(|(_, d)| d == entry),
            "{n}: entrypoint {entry} is not copied into the image"
        );
    }
}

/// `ldd BINARY`: soname → path on this machine (empty for the vDSO).
fn shared_objects(binary: &Path) -> BTreeMap<String, String> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (name, rest) = l.split_once(' ')?;
            let path = match rest.split_once("=> ") {
                Some((_, p)) => p.split_whitespace().next().unwrap_or_default(),
                None if name.starts_with('/') => name,
                None => "",
            };
            let soname = Path::new(name).file_name()?.to_string_lossy().to_string();
            Some((soname, path.to_string()))
        })
        .collect()
}

/// The newest `GLIBC_x.y` symbol version the binary needs.
fn newest_glibc(binary: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_2."))
        .filter_map(|minor| minor.split('.').next()?.parse::<u32>().ok())
        .map(|minor| (2, minor))
        .max()
        .expect("no GLIBC symbol versions")
}

#[test]
fn binaries_need_only_what_distroless_cc_has() {
    let (_, images) = parse_dockerfile();
    for image in &images {
        for (src, _) in &image.copies {
            let binary = workspace_binary(src);
            for soname in shared_objects(&binary).keys() {
                assert!(
                    DISTROLESS_CC_LIBS.contains(&soname.as_str()),
                    "{}: {src} needs {soname}, which {BASE} does not have",
                    image.name
                );
            }
            let glibc = newest_glibc(&binary);
            assert!(
                glibc <= GLIBC,
                "{}: {src} needs glibc {glibc:?} > {GLIBC:?}",
                image.name
            );
        }
    }
}

/// A root filesystem with what image `image` holds: its binaries at their paths, the shared
/// objects they load (from this Debian 12 machine: the same packages as the base image), CA
/// certificates and the `nonroot` user. Owned by root and not writable by anyone else.
fn image_root(image: &Image, dir: &Path) -> PathBuf {
    let root = dir.join(&image.name);
    let put = |from: &Path, to: &str| {
        let dest = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    for (src, dest) in &image.copies {
        let binary = workspace_binary(src);
        put(&binary, dest);
        for path in shared_objects(&binary).values().filter(|p| !p.is_empty()) {
            put(Path::new(path), path);
        }
    }
    put(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        "/etc/ssl/certs/ca-certificates.crt",
    );
    std::fs::create_dir_all(root.join("tmp")).expect("tmp");
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .expect("passwd");
    let st = Command::new("chmod")
        .args(["-R", "go-w"])
        .arg(&root)
        .status()
        .expect("chmod");
    assert!(st.success());
    root
}

/// `chroot --userspec=65532:65532 ROOT PROGRAM`: a process of the image, as its USER.
fn in_image(root: &Path, program: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg("--userspec=65532:65532").arg(root).arg(program);
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn images_run_as_nonroot_on_their_own_files() {
    if !is_root() {
        eprintln!("skipped: chroot needs root (CI runs as root)");
        return;
    }
    let (_, images) = parse_dockerfile();
    let image = |n: &str| images.iter().find(|i| i.name == n).expect(n);
    let dir = TempDir::new("images");
    let roots: BTreeMap<&str, PathBuf> = ["operator", "gateway", "sim"]
        .into_iter()
        .map(|n| (n, image_root(image(n), &dir.0)))
        .collect();

    // Operator: its entrypoint prints the CRD.
    let op = image("operator");
    let out = in_image(&roots["operator"], &op.entrypoint[0])
        .arg("crd")
        .output()
        .expect("run the operator image");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("kind: CustomResourceDefinition"),
        "operator image: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing in an image's root is writable by its user: the simulator cannot save a file.
    let sim_image = image("sim");
    for target in ["/usr/local/bin/speech.wav", "/tmp/speech.wav"] {
        let st = in_image(&roots["sim"], &sim_image.entrypoint[0])
            .args(["speak", "--text", "hello", "--out", target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("sim speak");
        assert!(!st.success(), "user 65532 wrote {target}");
        assert!(!roots["sim"].join(target.trim_start_matches('/')).exists());
    }
    // The same command as root: the check above fails for the reason it names.
    let st = Command::new("chroot")
        .arg(&roots["sim"])
        .args([
            &sim_image.entrypoint[0],
            "speak",
            "--text",
            "hello",
            "--out",
            "/tmp/speech.wav",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("sim speak as root");
    assert!(
        st.success() && roots["sim"].join("tmp/speech.wav").exists(),
        "sim speak as root"
    );

    // Simulator, gateway and the gateway image's client carry a turn.
    let sim = Sim::spawn(
        in_image(&roots["sim"], &sim_image.entrypoint[0]),
        &["--profile", "zero"],
    )
    .expect("sim image");
    let gw_image = image("gateway");
    let gateway = GatewayProcess::spawn(
        in_image(&roots["gateway"], &gw_image.entrypoint[0]),
        &sim.riva,
        &sim.llm,
        &[],
    )
    .expect("gateway image");
    gateway
        .wait_http("/readyz", 200, Duration::from_secs(30))
        .expect("gateway image ready");
    let client = gw_image
        .copies
        .iter()
        .map(|(_, d)| d)
        .find(|d| d.ends_with("/voice-client"))
        .expect("the gateway image carries voice-client");
    let out = in_image(&roots["gateway"], client)
        .args([
            "--target",
            &format!("127.0.0.1:{}", gateway.grpc_port),
            "--text",
            "What is the capital of France?",
        ])
        .output()
        .expect("client in the gateway image");
    let printed = String::from_utf8_lossy(&out.stdout);
    let reply = printed
        .lines()
        .find_map(|l| l.strip_prefix("reply:"))
        .map(str::trim)
        .unwrap_or_default();
    assert!(
        out.status.success() && reply.starts_with("You said: What is the capital of France."),
        "turn through the images: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gateway);
    drop(sim);
}
