//! The gRPC API over a real socket: status codes, health, reflection.

use keybridge_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::{Server, authed, field, fields};

const T: &str = "root-e2e";

#[tokio::test]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let s = Server::dev();
    let mut c = s.secrets().await;
    c.put(authed(T, pb::PutRequest { path: "secret/ok".into(), value: fields(&[("k", "v")]), cas: None }))
        .await
        .unwrap();

    let long = format!("secret/{}", "a".repeat(1100));
    let cases: Vec<(&str, pb::PutRequest, Code, &str)> = vec![
        (
            "empty segment",
            pb::PutRequest { path: "secret/a//b".into(), value: fields(&[("k", "v")]), cas: None },
            Code::InvalidArgument,
            "empty segment",
        ),
        (
            "dot-dot",
            pb::PutRequest { path: "secret/../x".into(), value: fields(&[("k", "v")]), cas: None },
            Code::InvalidArgument,
            "'..'",
        ),
        (
            "NUL",
            pb::PutRequest { path: "secret/a\0b".into(), value: fields(&[("k", "v")]), cas: None },
            Code::InvalidArgument,
            "U+0000",
        ),
        (
            "too long",
            pb::PutRequest { path: long, value: fields(&[("k", "v")]), cas: None },
            Code::InvalidArgument,
            "limit is 1024",
        ),
        (
            "no value",
            pb::PutRequest { path: "secret/a".into(), value: None, cas: None },
            Code::InvalidArgument,
            "value is missing",
        ),
        (
            "no fields",
            pb::PutRequest { path: "secret/a".into(), value: fields(&[]), cas: None },
            Code::InvalidArgument,
            "no fields",
        ),
        (
            "unknown mount",
            pb::PutRequest { path: "nomount/a".into(), value: fields(&[("k", "v")]), cas: None },
            Code::NotFound,
            "no mount serves",
        ),
        (
            "wrong cas",
            pb::PutRequest { path: "secret/ok".into(), value: fields(&[("k", "x")]), cas: Some(7) },
            Code::FailedPrecondition,
            "expected version 7",
        ),
        (
            "cas on new",
            pb::PutRequest { path: "secret/new".into(), value: fields(&[("k", "x")]), cas: Some(1) },
            Code::FailedPrecondition,
            "current version is 0",
        ),
        (
            "mount root",
            pb::PutRequest { path: "secret".into(), value: fields(&[("k", "x")]), cas: None },
            Code::InvalidArgument,
            "mount secret/ itself",
        ),
    ];
    for (name, req, code, needle) in cases {
        let err = c.put(authed(T, req)).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(err.message().contains(needle), "{name}: {}", err.message());
    }
    // Over the value cap (default 512 KiB) but under the message limit.
    let big = pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(vec![7; 512 * 1024 + 1])) };
    let err =
        c.put(authed(T, pb::PutRequest { path: "secret/big".into(), value: Some(big), cas: None })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 524288 bytes"), "{}", err.message());
    // Over the message limit entirely.
    let huge = pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(vec![7; 5 << 20])) };
    let err = c
        .put(authed(T, pb::PutRequest { path: "secret/huge".into(), value: Some(huge), cas: None }))
        .await
        .unwrap_err();
    assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument), "{err:?}");

    // Nothing was written by any of them.
    let list = c
        .list(authed(T, pb::ListRequest { path: "secret/".into(), recursive: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.keys, ["ok"]);
    let got = c
        .get(authed(T, pb::GetRequest { path: "secret/ok".into(), version: 0, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(field(&got, "k"), "v");
    assert_eq!(got.version.unwrap().version, 1);

    // Other operations.
    let err = c
        .get(authed(T, pb::GetRequest { path: "secret/ok".into(), version: 5, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete(authed(
            T,
            pb::DeleteRequest { path: "secret/ok".into(), versions: vec![0], all_versions: false, purge: false },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        c.destroy(authed(T, pb::DestroyRequest { path: "secret/ok".into(), versions: vec![] })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .list(authed(T, pb::ListRequest { path: "secret/".into(), page_size: 50_000, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Authentication problems.
    let mut r = tonic::Request::new(pb::GetRequest { path: "secret/ok".into(), version: 0, ..Default::default() });
    r.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
    let err = c.get(r).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("Bearer"));
    let err = c
        .get(tonic::Request::new(pb::GetRequest { path: "secret/ok".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .get(authed("nope", pb::GetRequest { path: "secret/ok".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "missing or invalid token");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let s = Server::dev();
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    for service in ["", "keybridge.v1.Secrets"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(s.channel().await);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("keybridge.v1.Secrets".into())),
        },
    ];
    let mut stream = refl.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else { panic!("list expected") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["keybridge.v1.Secrets", "keybridge.v1.Sys", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    // Health knows every API service the server lists, serving while
    // unsealed and not serving once sealed.
    let api: Vec<&String> = names.iter().filter(|n| n.starts_with("keybridge.v1.")).collect();
    assert_eq!(api.len(), 10, "{api:?}");
    let check = |service: String| {
        let mut health = health.clone();
        async move { health.check(tonic_health::pb::HealthCheckRequest { service }).await.unwrap().into_inner().status }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    for n in &api {
        assert_eq!(check(n.to_string()).await, ServingStatus::Serving as i32, "{n}");
    }
    s.sys().await.seal(crate::harness::authed("root-e2e", keybridge_proto::v1::SealRequest {})).await.unwrap();
    for n in &api {
        assert_eq!(check(n.to_string()).await, ServingStatus::NotServing as i32, "{n}");
    }
    let second = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
        panic!("descriptor expected")
    };
    assert!(!fd.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn list_pages_over_the_wire() {
    let s = Server::dev();
    let mut c = s.secrets().await;
    for i in 0..25 {
        c.put(authed(T, pb::PutRequest { path: format!("secret/p/k{i:02}"), value: fields(&[("v", "x")]), cas: None }))
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list(authed(
                T,
                pb::ListRequest { path: "secret/p/".into(), page_size: 10, page_token: token, recursive: false },
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        all.extend(r.keys);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 25);
    assert_eq!(all[0], "k00");
    assert_eq!(all[24], "k24");
}

#[test]
fn process_hygiene_core_dumps_off_and_memory_locked() {
    let s = Server::dev();
    let pid = s.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    let soft: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(soft[4], "0", "core dumps must be off: {core}");
    // A server that cannot lock its memory does not start (the next test),
    // so one that runs has locked it, whoever runs it.
    assert!(crate::harness::locked_kib(pid) > 0, "memory is not locked");
    // `disable_mlock = true` (the config servers of these tests) locks nothing.
    let dir = tempfile::tempdir().unwrap();
    let unlocked = Server::with_config(dir.path(), false, 0);
    assert_eq!(crate::harness::locked_kib(unlocked.child.id()), 0);
}

/// Where memory cannot be locked (no CAP_IPC_LOCK, RLIMIT_MEMLOCK of 64 KiB:
/// made with util-linux's `prlimit` and `setpriv`), a server does not start
/// unless its config says `disable_mlock = true`.
#[test]
fn a_failed_mlock_stops_the_server_unless_disabled() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let start = |disable: bool| {
        let file = dir.path().join(format!("kb-{disable}.hcl"));
        let config = format!(
            "listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_disable = true\n}}\nstorage \"inmem\" {{}}\ndisable_mlock = {disable}\n"
        );
        std::fs::write(&file, config).unwrap();
        Command::new("prlimit")
            .args(["--memlock=65536", "setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"])
            .arg(crate::harness::BIN)
            .args(["server", "--config", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prlimit and setpriv (util-linux)")
    };
    let refused = start(false).wait_with_output().unwrap();
    assert!(!refused.status.success(), "the server started without locked memory");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("cannot lock memory") && err.contains("disable_mlock = true"), "{err}");
    let mut allowed = start(true);
    let mut lines = std::io::BufReader::new(allowed.stdout.take().unwrap()).lines();
    let listening = lines.by_ref().map_while(Result::ok).any(|l| l.contains("Listening on"));
    let _ = allowed.kill();
    let _ = allowed.wait();
    assert!(listening, "with disable_mlock = true the server serves");
}

async fn rate_limited_server() -> (Server, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "token_requests_per_second = 5\ntoken_burst = 5");
    let mut sys = s.sys().await;
    let init = sys.init(pb::InitRequest { key_shares: 1, key_threshold: 1 }).await.unwrap().into_inner();
    sys.unseal(pb::UnsealRequest { key: init.unseal_keys_b64[0].clone(), reset: false, migrate: false }).await.unwrap();
    (s, dir, init.root_token)
}

#[tokio::test]
async fn per_token_rate_limit_respected() {
    let (s, _dir, root) = rate_limited_server().await;
    let mut c = s.secrets().await;
    // Within the burst, and then at the configured rate: all served.
    for i in 0..5 {
        let req = pb::PutRequest { path: format!("secret/k{i}"), value: fields(&[("v", "1")]), cas: None };
        c.put(authed(&root, req)).await.unwrap();
    }
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        c.get(authed(&root, pb::GetRequest { path: "secret/k0".into(), version: 0, ..Default::default() }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn per_token_rate_limit_exceeded() {
    let (s, _dir, root) = rate_limited_server().await;
    let mut c = s.secrets().await;
    let mut exhausted = 0;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        match c
            .get(authed(&root, pb::GetRequest { path: "secret/none".into(), version: 0, ..Default::default() }))
            .await
        {
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("rate limit"), "{}", e.message());
                exhausted += 1;
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            Ok(_) => panic!("no such secret"),
        }
    }
    // 5 at once, then one more every 200 ms: however slow this machine, the
    // rest must have been refused.
    let refilled = (started.elapsed().as_millis() / 200) as usize + 1;
    assert!(exhausted >= 20 - 5 - refilled, "only {exhausted} of 20 were limited ({refilled} refills)");
    assert!(exhausted > 0);
    // Another token has its own budget; requests without a token are
    // refused as unauthenticated, not rate limited.
    let err = c
        .get(authed("other", pb::GetRequest { path: "secret/none".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The budget refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = c
        .get(authed(&root, pb::GetRequest { path: "secret/none".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = Server::dev();
    let mut c = s.secrets().await;
    let r = c
        .get(authed(T, pb::GetRequest { path: "secret/none".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    let id = r.metadata().get("x-request-id").expect("a generated request id").to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let mut req = authed(T, pb::ListRequest { path: "secret/".into(), ..Default::default() });
    req.metadata_mut().insert("x-request-id", "trace-me-42".parse().unwrap());
    let resp = c.list(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "trace-me-42");
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let s = Server::dev_logging_to(&log);
    let t = "root-LOGCHECK-7f3e";
    let mut c = s.secrets().await;
    let put =
        pb::PutRequest { path: "secret/app".into(), value: fields(&[("password", "VALUE-LOGCHECK-91ab")]), cas: None };
    c.put(authed(t, put)).await.unwrap();
    c.get(authed(t, pb::GetRequest { path: "secret/app".into(), version: 0, ..Default::default() })).await.unwrap();
    let _ = c
        .get(authed(
            "wrong-LOGCHECK-token",
            pb::GetRequest { path: "secret/app".into(), version: 0, ..Default::default() },
        ))
        .await;
    // Sealed first, so the unseal below reads and refuses the key (an
    // unsealed server answers before reading it).
    let mut sys = s.sys().await;
    sys.seal(authed(t, pb::SealRequest {})).await.unwrap();
    let e = sys
        .unseal(pb::UnsealRequest { key: "KEY-LOGCHECK-55".into(), reset: false, migrate: false })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("invalid unseal key"), "{}", e.message());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(s);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 20, "trace logging was on");
    for secret in ["root-LOGCHECK-7f3e", "VALUE-LOGCHECK-91ab", "wrong-LOGCHECK-token", "KEY-LOGCHECK-55"] {
        assert!(!text.contains(secret), "{secret} appears in the log");
    }
}
