//! One conformance suite over every backend a mount can have: the same
//! scenarios through the gateway's gRPC API against the local store, AWS
//! (moto's server, through aws-sdk-secretsmanager), Azure (our Key Vault
//! test server over HTTPS, through the official Azure SDK) and GCP (drongo,
//! through the official Google SDK, and our Secret Manager test server,
//! which keeps annotations). What each scenario expects of a cloud comes
//! from the capability table (`Cloud::capabilities`), so the table and the
//! behaviour cannot drift apart.

use std::collections::BTreeMap;

use keybridge_proto::v1 as pb;
use keybridge_provider_api::Cloud;
use keybridge_provider_api::capabilities::Capabilities;
use keybridge_testservers::process::Spawned;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Server, authed, field, fields, moto};

const T: &str = "root-e2e";

struct Backend {
    mount: &'static str,
    cloud: Option<Cloud>,
    /// Keeps the cloud's test server alive.
    _upstream: Option<Spawned>,
    config: BTreeMap<String, String>,
    /// Whether the upstream keeps custom metadata (drongo drops GCP's
    /// annotations; our Secret Manager server keeps them).
    metadata: bool,
}

impl Backend {
    fn caps(&self) -> Option<Capabilities> {
        self.cloud.map(Cloud::capabilities)
    }

    fn name(&self) -> &'static str {
        self.cloud.map_or("the local store", Cloud::name)
    }
}

fn drongo() -> Spawned {
    Spawned::start("KEYBRIDGE_DRONGO", |port| {
        vec!["server".into(), "--host".into(), "127.0.0.1".into(), "--port".into(), port.to_string()]
    })
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn aws() -> Backend {
    let m = moto();
    let config = map(&[
        ("region", "us-east-1"),
        ("endpoint_url", &m.url()),
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
        ("prefix", "kb/"),
    ]);
    Backend { mount: "aws/", cloud: Some(Cloud::Aws), _upstream: Some(m), config, metadata: true }
}

fn gcp() -> Backend {
    let d = drongo();
    let config =
        map(&[("project", "keybridge-test"), ("endpoint", &d.url()), ("credentials", "anonymous"), ("prefix", "kb-")]);
    Backend { mount: "gcp/", cloud: Some(Cloud::Gcp), _upstream: Some(d), config, metadata: false }
}

/// Our Key Vault test server (no third-party emulator runs here), reached
/// over HTTPS with its test CA through a client-secret credential.
async fn azure() -> (Backend, keybridge_testservers::keyvault::KeyVault) {
    use keybridge_testservers::keyvault::{self, KeyVault};
    let kv = KeyVault::start().await;
    let ca = std::env::temp_dir().join(format!("kb-e2e-kv-ca-{}-{}.pem", std::process::id(), kv.addr.port()));
    std::fs::write(&ca, &kv.ca_pem).unwrap();
    let config = map(&[
        ("vault_url", &kv.url),
        ("authority_host", &kv.url),
        ("tenant_id", &kv.tenant),
        ("client_id", keyvault::CLIENT_ID),
        ("client_secret", keyvault::CLIENT_SECRET),
        ("ca_cert", ca.to_str().unwrap()),
        ("prefix", "kb-"),
    ]);
    (Backend { mount: "azure/", cloud: Some(Cloud::Azure), _upstream: None, config, metadata: true }, kv)
}

/// Our Secret Manager test server, which keeps annotations and pages and
/// takes only its service account's key.
async fn gcp_ours() -> (Backend, keybridge_testservers::secretmanager::SecretManager) {
    let sm = keybridge_testservers::secretmanager::SecretManager::start("keybridge-test").await;
    let key = sm.key_file().to_str().unwrap().to_string();
    let config = map(&[("project", "keybridge-test"), ("endpoint", &sm.url()), ("credentials", &key)]);
    (Backend { mount: "gcp/", cloud: Some(Cloud::Gcp), _upstream: None, config, metadata: true }, sm)
}

fn local() -> Backend {
    Backend { mount: "secret/", cloud: None, _upstream: None, config: BTreeMap::new(), metadata: true }
}

async fn mount(s: &Server, b: &Backend) {
    if let Some(cloud) = b.cloud {
        let kind = match cloud {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
            Cloud::Gcp => "gcp",
        };
        s.sys()
            .await
            .enable_mount(authed(
                T,
                pb::EnableMountRequest {
                    path: b.mount.into(),
                    r#type: kind.into(),
                    description: String::new(),
                    config: b.config.clone().into_iter().collect(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("mount {kind}: {e:?}"));
    }
}

type Secrets = pb::secrets_client::SecretsClient<Channel>;

async fn put(c: &mut Secrets, path: &str, v: Option<pb::SecretValue>, cas: Option<u64>) -> Result<u64, tonic::Status> {
    let r = c.put(authed(T, pb::PutRequest { path: path.into(), value: v, cas })).await?;
    Ok(r.into_inner().version.unwrap().version)
}

async fn get(c: &mut Secrets, path: &str, version: u64) -> Result<pb::GetResponse, tonic::Status> {
    c.get(authed(T, pb::GetRequest { path: path.into(), version, ..Default::default() })).await.map(|r| r.into_inner())
}

async fn describe(c: &mut Secrets, path: &str) -> pb::SecretMetadata {
    c.describe(authed(T, pb::DescribeRequest { path: path.into() })).await.unwrap().into_inner().metadata.unwrap()
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, text: &str, what: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(s.message().contains(text), "{what}: {:?} should mention {text:?}", s.message());
        }
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
    }
}

/// Calls the mount has made to its cloud (0 for the local store).
async fn upstream_calls(s: &Server, mount: &str) -> u64 {
    let r = s.sys().await.list_mounts(authed(T, pb::ListMountsRequest {})).await.unwrap().into_inner();
    r.mounts.iter().find(|x| x.path == mount).and_then(|x| x.stats).map_or(0, |st| st.upstream_calls)
}

/// Every scenario, against one backend.
async fn conformance(b: Backend) {
    let s = Server::dev();
    mount(&s, &b).await;
    let mut c = s.secrets().await;
    let m = b.mount;
    let who = b.name();
    let p = |rel: &str| format!("{m}{rel}");

    // put / get / update, with version numbers from 1.
    assert_eq!(put(&mut c, &p("team/app/db"), fields(&[("user", "alice"), ("pw", "one")]), None).await.unwrap(), 1);
    assert_eq!(put(&mut c, &p("team/app/db"), fields(&[("user", "alice"), ("pw", "two")]), None).await.unwrap(), 2);
    let r = get(&mut c, &p("team/app/db"), 0).await.unwrap();
    assert_eq!((field(&r, "pw"), r.version.as_ref().unwrap().version), ("two".into(), 2), "{who}");
    assert_eq!(field(&get(&mut c, &p("team/app/db"), 1).await.unwrap(), "pw"), "one", "{who}: version 1");

    // check-and-set.
    expect_code(
        put(&mut c, &p("team/app/db"), fields(&[("pw", "x")]), Some(0)).await,
        Code::FailedPrecondition,
        "",
        who,
    );
    expect_code(
        put(&mut c, &p("team/app/db"), fields(&[("pw", "x")]), Some(1)).await,
        Code::FailedPrecondition,
        "",
        who,
    );
    expect_code(put(&mut c, &p("team/new"), fields(&[("pw", "x")]), Some(3)).await, Code::FailedPrecondition, "", who);
    assert_eq!(put(&mut c, &p("team/app/db"), fields(&[("pw", "three")]), Some(2)).await.unwrap(), 3, "{who}");
    assert_eq!(put(&mut c, &p("team/created"), fields(&[("pw", "x")]), Some(0)).await.unwrap(), 1, "{who}");

    // versions: describe lists them; clouds give their ids and stages.
    let meta = describe(&mut c, &p("team/app/db")).await;
    assert_eq!(meta.current_version, 3, "{who}");
    let numbers: Vec<u64> = meta.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, vec![1, 2, 3], "{who}");
    if let Some(cloud) = b.cloud {
        let v2 = &meta.versions[1];
        assert!(!v2.provider_version_id.is_empty(), "{who}: provider ids");
        let by_id = c
            .get(authed(
                T,
                pb::GetRequest {
                    path: p("team/app/db"),
                    version_id: v2.provider_version_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(field(&by_id, "pw"), "two", "{who}: by provider id");
        if cloud == Cloud::Aws {
            assert_eq!(meta.versions[2].stages, vec!["AWSCURRENT".to_string()]);
            assert_eq!(v2.stages, vec!["AWSPREVIOUS".to_string()]);
            let prev = c
                .get(authed(
                    T,
                    pb::GetRequest { path: p("team/app/db"), stage: "AWSPREVIOUS".into(), ..Default::default() },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!((field(&prev, "pw"), prev.version.unwrap().version), ("two".into(), 2));
        }
    } else {
        let bad = c
            .get(authed(T, pb::GetRequest { path: p("team/app/db"), stage: "AWSCURRENT".into(), ..Default::default() }))
            .await;
        expect_code(bad, Code::InvalidArgument, "no provider version ids or stages", who);
    }

    // not found.
    expect_code(get(&mut c, &p("team/none"), 0).await, Code::NotFound, "", who);
    expect_code(get(&mut c, &p("team/app/db"), 9).await, Code::NotFound, "", who);

    // binary and text values round-trip exactly.
    let bin = pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(vec![0, 159, 146, 150, 255])) };
    put(&mut c, &p("team/blob"), Some(bin.clone()), None).await.unwrap();
    assert_eq!(get(&mut c, &p("team/blob"), 0).await.unwrap().value, Some(bin), "{who}: binary");
    let text = pb::SecretValue { kind: Some(pb::secret_value::Kind::Text("just a string".into())) };
    put(&mut c, &p("team/plain"), Some(text.clone()), None).await.unwrap();
    assert_eq!(get(&mut c, &p("team/plain"), 0).await.unwrap().value, Some(text), "{who}: text");

    // list, with paging and folders.
    for i in 0..5 {
        put(&mut c, &p(&format!("paged/k{i}")), fields(&[("v", "x")]), None).await.unwrap();
    }
    put(&mut c, &p("paged/sub/deep"), fields(&[("v", "x")]), None).await.unwrap();
    let mut keys = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list(authed(T, pb::ListRequest { path: p("paged/"), page_size: 2, page_token: token, recursive: false }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.keys.len() <= 2);
        keys.extend(r.keys);
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "sub/"], "{who}: list");
    assert_eq!(pages, 3, "{who}: pages");
    let top = c
        .list(authed(T, pb::ListRequest { path: m.into(), page_size: 0, page_token: String::new(), recursive: false }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.keys, ["paged/", "team/"], "{who}: top level");

    // size and name limits, refused before any call.
    let calls_before = upstream_calls(&s, m).await;
    let limit = b.cloud.map_or(512 * 1024, Cloud::max_value_bytes);
    let big = "x".repeat(limit + 1);
    expect_code(put(&mut c, &p("team/big"), fields(&[("v", &big)]), None).await, Code::InvalidArgument, "", who);
    expect_code(get(&mut c, &p("team/big"), 0).await, Code::NotFound, "", who);
    if let Some(cloud) = b.cloud {
        let long = format!("team/{}", "n".repeat(cloud.max_name_len()));
        expect_code(put(&mut c, &p(&long), fields(&[("v", "x")]), None).await, Code::InvalidArgument, "at most", who);
        if cloud == Cloud::Azure {
            // Azure keeps bytes as base64: the limit applies to the encoding.
            let bin = pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(vec![7; limit * 3 / 4 + 3])) };
            expect_code(put(&mut c, &p("team/big"), Some(bin), None).await, Code::InvalidArgument, "as base64", who);
        }
    }
    // The get of team/big above made one call; the refused writes none.
    let expected = if b.cloud.is_some() { 1 } else { 0 };
    assert_eq!(upstream_calls(&s, m).await - calls_before, expected, "{who}: calls for refused writes");

    // custom metadata.
    if b.metadata {
        c.put_metadata(authed(
            T,
            pb::PutMetadataRequest {
                path: p("team/app/db"),
                custom_metadata: [("owner".to_string(), "payments".to_string())].into(),
                max_versions: None,
                cas_required: None,
                keep_custom_metadata: false,
            },
        ))
        .await
        .unwrap();
        let meta = describe(&mut c, &p("team/app/db")).await;
        assert_eq!(meta.custom_metadata.get("owner").map(String::as_str), Some("payments"), "{who}: metadata");
    }
    if b.cloud.is_some() {
        let r = c
            .put_metadata(authed(
                T,
                pb::PutMetadataRequest {
                    path: p("team/app/db"),
                    custom_metadata: Default::default(),
                    max_versions: Some(3),
                    cas_required: None,
                    keep_custom_metadata: false,
                },
            ))
            .await;
        expect_code(r, Code::Unimplemented, b.name(), "max_versions on a cloud");
    }

    // single-version soft delete and undelete, and destroy, per capability.
    let soft = b.caps().is_none_or(|c| c.version_soft_delete);
    let del = c
        .delete(authed(
            T,
            pb::DeleteRequest { path: p("team/app/db"), versions: vec![1], all_versions: false, purge: false },
        ))
        .await;
    if soft {
        del.unwrap();
        expect_code(
            get(&mut c, &p("team/app/db"), 1).await,
            Code::NotFound,
            "",
            &format!("{who}: deleted version unreadable"),
        );
        c.undelete(authed(T, pb::UndeleteRequest { path: p("team/app/db"), versions: vec![1], restore_secret: false }))
            .await
            .unwrap();
        assert_eq!(field(&get(&mut c, &p("team/app/db"), 1).await.unwrap(), "pw"), "one", "{who}: undeleted");
    } else {
        expect_code(del, Code::Unimplemented, b.name(), "version soft delete");
    }
    let destroy = c.destroy(authed(T, pb::DestroyRequest { path: p("team/app/db"), versions: vec![1] })).await;
    if b.caps().is_none_or(|c| c.version_destroy) {
        destroy.unwrap();
        expect_code(get(&mut c, &p("team/app/db"), 1).await, Code::NotFound, "", &format!("{who}: destroyed"));
        assert_eq!(field(&get(&mut c, &p("team/app/db"), 2).await.unwrap(), "pw"), "two", "{who}: others stay");
    } else {
        expect_code(destroy, Code::Unimplemented, b.name(), "version destroy");
    }

    // whole-secret delete: recoverable where the cloud can, then restore;
    // purge removes for good.
    let del_all =
        |purge: bool| pb::DeleteRequest { path: p("team/created"), versions: vec![], all_versions: true, purge };
    let r = c.delete(authed(T, del_all(false))).await;
    match b.caps() {
        Some(caps) if caps.recoverable_delete => {
            r.unwrap();
            expect_code(get(&mut c, &p("team/created"), 0).await, Code::NotFound, "", &format!("{who}: deleted"));
            if b.cloud == Some(Cloud::Aws) {
                // AWS still describes it, every version marked deleted.
                let meta = describe(&mut c, &p("team/created")).await;
                assert!(meta.versions.iter().all(|v| v.deletion_time.is_some()), "{meta:?}");
            }
            c.undelete(authed(
                T,
                pb::UndeleteRequest { path: p("team/created"), versions: vec![], restore_secret: true },
            ))
            .await
            .unwrap();
            assert_eq!(field(&get(&mut c, &p("team/created"), 0).await.unwrap(), "pw"), "x", "{who}: restored");
        }
        Some(_) => expect_code(r, Code::Unimplemented, "purge", "recoverable delete"),
        None => {
            r.unwrap();
            expect_code(get(&mut c, &p("team/created"), 0).await, Code::NotFound, "", &format!("{who}: deleted"));
            put(&mut c, &p("team/created"), fields(&[("pw", "x")]), None).await.unwrap();
            let restore = c
                .undelete(authed(
                    T,
                    pb::UndeleteRequest { path: p("team/created"), versions: vec![], restore_secret: true },
                ))
                .await;
            expect_code(restore, Code::Unimplemented, "nothing to restore", "local restore");
        }
    }
    c.delete(authed(T, del_all(true))).await.unwrap();
    expect_code(get(&mut c, &p("team/created"), 0).await, Code::NotFound, "", who);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    conformance(local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_conforms() {
    conformance(aws()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_conforms() {
    let (backend, _kv) = azure().await;
    conformance(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_on_our_secret_manager_server_conforms() {
    let (backend, sm) = gcp_ours().await;
    conformance(backend).await;
    // The gateway signed its calls with the mount's service-account key
    // (the server takes nothing else), for this endpoint only.
    let claims = sm.last_jwt_claims().expect("a JWT signed with the key");
    assert_eq!(claims["aud"], format!("{}/", sm.url()), "{claims:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_conforms() {
    conformance(gcp()).await;
}
