//! A third-party client: Python's grpcio, through stubs that grpcio-tools
//! generates from the .proto files at test time, and through the v1alpha
//! reflection service alone. `KEYBRIDGE_PYTHON` names an interpreter with
//! grpcio-tools and grpcio-reflection (tests/run-all.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Server, blocking};

const T: &str = "root-e2e";

fn python() -> PathBuf {
    let py = std::env::var_os("KEYBRIDGE_PYTHON").expect(
        "KEYBRIDGE_PYTHON must name a Python with grpcio-tools and grpcio-reflection (tests/run-all.sh sets it)",
    );
    PathBuf::from(py)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python").join(name)
}

/// Runs `args` under the test Python in `cwd` with `PYTHONPATH`; panics
/// with its output unless it succeeds. Returns its stdout.
fn run_python(cwd: &Path, pythonpath: &Path, args: &[&str]) -> String {
    let o =
        blocking(|| Command::new(python()).args(args).current_dir(cwd).env("PYTHONPATH", pythonpath).output().unwrap());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "python {args:?} failed:\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn target(s: &Server) -> String {
    s.addr.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn generated_python_stubs_drive_the_server() {
    let s = Server::dev();
    let stubs = tempfile::tempdir().unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = std::fs::read_dir(proto.join("keybridge/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    assert_eq!(files.len(), 6, "the API's .proto files: {files:?}");
    let mut args = vec![
        "-m".to_string(),
        "grpc_tools.protoc".into(),
        format!("-I{}", proto.display()),
        format!("--python_out={}", stubs.path().display()),
        format!("--grpc_python_out={}", stubs.path().display()),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(stubs.path(), stubs.path(), &args);
    assert!(stubs.path().join("keybridge/v1/secrets_pb2_grpc.py").is_file());

    let out = run_python(stubs.path(), stubs.path(), &[script("stubs_client.py").to_str().unwrap(), &target(&s), T]);
    for line in [
        "stale cas: FAILED_PRECONDITION",
        "put: versions 1 and 2",
        "get: latest and version 1",
        "watch: put 1, put 2",
        "denied: PERMISSION_DENIED",
        "no token: UNAUTHENTICATED",
        "ok",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[tokio::test]
async fn python_reflection_v1alpha_lists_and_calls_without_a_proto_file() {
    let s = Server::dev();
    let mut c = s.secrets().await;
    let put = keybridge_proto::v1::PutRequest {
        path: "secret/reflected".into(),
        value: crate::harness::fields(&[("colour", "teal")]),
        cas: None,
    };
    c.put(crate::harness::authed(T, put)).await.unwrap();
    // An empty directory: no stubs, no .proto file within reach.
    let empty = tempfile::tempdir().unwrap();
    let out = run_python(
        empty.path(),
        empty.path(),
        &[script("reflection_client.py").to_str().unwrap(), &target(&s), T, "secret/reflected", "colour", "teal"],
    );
    assert!(out.contains("grpc.reflection.v1alpha.ServerReflection"), "{out}");
    assert!(out.contains("Secrets.Get through reflection: version 1"), "{out}");
}
