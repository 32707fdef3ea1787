//! Three gateway nodes on one PostgreSQL table under load: bounded loops of
//! writes (replicated to AWS, moto), logins (JWT) and engine credentials
//! with leases (the saas plugin against its test service), every
//! acknowledged one recorded, while (a) the leader is killed in the middle
//! of a replication and of a rotation, (b) the next leader is paused past
//! its lease and resumed, (c) PostgreSQL restarts. Then: every acknowledged
//! write reads back from every node, no version twice in the store or at
//! the emulator, the rotation ended with every copy on one value, every
//! engine credential was revoked exactly once (none lost), and a token
//! revoked on one node is refused on the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_testservers::issuer::{Issuer, now};
use keybridge_testservers::postgres::Postgres;
use keybridge_testservers::saas::Saas;
use serde_json::Value;

use crate::harness::{Server, boto3, init_unseal, json, moto, stderr, stdout};

const ISS: &str = "https://ci.example.com";

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

/// The nodes, and which of them the loops may call (not killed or paused).
struct Cluster {
    nodes: Vec<Server>,
    up: Mutex<Vec<bool>>,
}

impl Cluster {
    /// The next node up after `i` (round robin), if any.
    fn pick(&self, i: usize) -> Option<&Server> {
        let up = self.up.lock().unwrap();
        (0..self.nodes.len()).map(|k| (i + k) % self.nodes.len()).find(|&n| up[n]).map(|n| &self.nodes[n])
    }

    fn set_up(&self, n: usize, up: bool) {
        self.up.lock().unwrap()[n] = up;
    }

    fn leader(&self) -> Option<usize> {
        let up = self.up.lock().unwrap().clone();
        (0..self.nodes.len())
            .find(|&n| up[n] && json(&self.nodes[n].cli(None, &["operator", "status", "-o", "json"]))["leader"] == true)
    }

    fn signal(&self, n: usize, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.nodes[n].child.id() as i32, sig) };
    }
}

/// What the loops did.
#[derive(Default)]
struct Record {
    /// Per secret: every value a write was attempted with, in order, and
    /// the index of the last one acknowledged.
    writes: BTreeMap<String, (Vec<String>, Option<usize>)>,
    refused_writes: usize,
    logins: Vec<String>,
    refused_logins: usize,
    /// Why (the first few).
    login_errors: Vec<String>,
    /// Engine credentials issued: (api key, lease id).
    creds: Vec<(String, String)>,
    refused_creds: usize,
}

impl Cluster {
    /// The nodes up now.
    fn live(&self) -> Vec<&Server> {
        let up = self.up.lock().unwrap().clone();
        (0..self.nodes.len()).filter(|&n| up[n]).map(|n| &self.nodes[n]).collect()
    }
}

/// The three loops, running until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Arc<Cluster>, record: &Arc<Mutex<Record>>, root: &str, jwts: &Arc<Vec<String>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        {
            let (cluster, record, stop, root) = (cluster.clone(), record.clone(), stop.clone(), root.to_string());
            loops.push(std::thread::spawn(move || {
                let mut i = record.lock().unwrap().writes.values().map(|w| w.0.len()).sum::<usize>();
                while !stop.load(Ordering::SeqCst) {
                    let Some(s) = cluster.pick(i) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let (path, value) = (format!("secret/rep/k{}", i % 8), format!("v{i}"));
                    record.lock().unwrap().writes.entry(path.clone()).or_default().0.push(value.clone());
                    let o = s.cli(Some(&root), &["kv", "put", &path, &format!("pw={value}")]);
                    let mut r = record.lock().unwrap();
                    if o.status.success() {
                        let e = r.writes.get_mut(&path).unwrap();
                        e.1 = Some(e.0.len() - 1);
                    } else {
                        r.refused_writes += 1;
                    }
                    i += 1;
                }
            }));
        }
        {
            let (cluster, record, stop, jwts) = (cluster.clone(), record.clone(), stop.clone(), jwts.clone());
            loops.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let i = {
                        let r = record.lock().unwrap();
                        r.logins.len() + r.refused_logins
                    };
                    let (Some(s), Some(jwt)) = (cluster.pick(i + 1), jwts.get(i)) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    // Under the default per-address login limit.
                    std::thread::sleep(Duration::from_millis(150));
                    let o = s.cli_stdin(None, &["login", "ci", "--role", "deploy", "--jwt", "-", "-o", "json"], jwt);
                    let mut r = record.lock().unwrap();
                    match o.status.success() {
                        true => r.logins.push(json(&o)["token"].as_str().unwrap_or_default().to_string()),
                        false => {
                            r.refused_logins += 1;
                            if r.login_errors.len() < 5 {
                                r.login_errors.push(stderr(&o));
                            }
                        }
                    }
                }
            }));
        }
        {
            let (cluster, record, stop, root) = (cluster.clone(), record.clone(), stop.clone(), root.to_string());
            loops.push(std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let Some(s) = cluster.pick(i + 2) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let o = s.cli(Some(&root), &["read", "saas/creds/app", "-o", "json"]);
                    let mut r = record.lock().unwrap();
                    if o.status.success() {
                        let v = json(&o);
                        r.creds.push((
                            v["data"]["api_key"].as_str().unwrap_or_default().to_string(),
                            v["lease_id"].as_str().unwrap_or_default().to_string(),
                        ));
                    } else {
                        r.refused_creds += 1;
                    }
                    i += 1;
                }
            }));
        }
        Load { stop, loops }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in self.loops {
            l.join().unwrap();
        }
    }
}

/// After a scenario: every acknowledged write reads back from every node up,
/// no version twice in the store, each replica at AWS is the source's value
/// with no value written twice, and a login token revoked on one node is
/// refused on the others.
fn check(
    cluster: &Cluster,
    record: &Mutex<Record>,
    moto: &keybridge_testservers::process::Spawned,
    t: &str,
    what: &str,
) {
    let live = cluster.live();
    let leading = &cluster.nodes[cluster.leader().expect("no leader")];
    let sync = ok(&leading.cli(Some(t), &["sync", "run", "--wait", "--timeout", "60s", "-o", "json"]));
    let r = record.lock().unwrap();
    for (path, (attempts, last)) in &r.writes {
        // The last acknowledged value, or one attempted after it (a write
        // whose answer was lost in a kill or the restart may have landed).
        let Some(last) = *last else { continue };
        for n in &live {
            let v = json(&n.cli(Some(t), &["kv", "get", "-o", "json", path]));
            let got = v["data"]["pw"].as_str().unwrap_or_default().to_string();
            let pos = attempts.iter().position(|a| *a == got);
            assert!(
                pos.is_some_and(|p| p >= last),
                "{what} {path}: read {got:?}, last acknowledged {:?}",
                attempts[last]
            );
        }
        // No version twice in the store: at most one per attempt.
        let meta = json(&live[0].cli(Some(t), &["kv", "metadata", "get", "-o", "json", path]));
        let current = meta["current_version"].as_u64().unwrap() as usize;
        assert!(current <= attempts.len(), "{what} {path}: {current} versions for {} attempts", attempts.len());
        // At the emulator: the source's value, no value written twice
        // (distinct versions counted at moto).
        let name = path.trim_start_matches("secret/");
        let out = boto3(
            moto,
            &format!(
                "import json\nvs=c.list_secret_version_ids(SecretId='{name}', IncludeDeprecated=True)['Versions']\n\
                 vals=[c.get_secret_value(SecretId='{name}', VersionId=v['VersionId'])['SecretString'] for v in vs]\n\
                 print(json.dumps(vals))\nprint(c.get_secret_value(SecretId='{name}')['SecretString'])\n"
            ),
        );
        let mut lines = out.lines();
        let values: Vec<String> = serde_json::from_str(lines.next().unwrap_or("[]")).unwrap();
        let replica: Value = serde_json::from_str(lines.next().unwrap_or("{}")).unwrap();
        let source = json(&live[0].cli(Some(t), &["kv", "get", "-o", "json", path]))["data"]["pw"].clone();
        assert_eq!(replica["pw"], source, "{what} {path}: the replica is not the source ({sync})");
        let distinct: BTreeSet<&String> = values.iter().collect();
        assert_eq!(distinct.len(), values.len(), "{what} {path}: a value written twice at AWS: {values:?}");
        assert!(values.len() <= current, "{what} {path}: {} versions at AWS, {current} in the store", values.len());
    }
    // A login token revoked on one node is refused on the others within
    // the feed's lag.
    let token = r.logins.last().expect("no login went through").clone();
    drop(r);
    ok(&live[1].cli(Some(&token), &["token", "lookup"]));
    ok(&live[0].cli(Some(t), &["token", "revoke", &token]));
    for n in &live[1..] {
        let refused = within(Duration::from_secs(3), || !n.cli(Some(&token), &["token", "lookup"]).status.success());
        assert!(refused.is_some(), "{what}: a token revoked on one node still works on another");
    }
    eprintln!("{what}: every acknowledged write read back from {} nodes", live.len());
}

fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_under_load_survive_a_kill_a_pause_and_a_database_restart() {
    let pg = Arc::new(Postgres::start());
    let moto = moto();
    let saas = Saas::start("admin-secret").await;
    let ci = Issuer::new(ISS, "k1");
    let work = tempfile::tempdir().unwrap();
    let jwks = work.path().join("jwks.json");
    std::fs::write(&jwks, ci.jwks()).unwrap();
    let block = format!(
        "storage \"postgresql\" {{\n connection_url = \"{}\"\n table = \"kb_load\"\n max_connections = 8\n \
         tls_ca_file = \"{}\"\n leader_lease = \"2s\"\n feed_max_lag = \"2s\"\n}}",
        pg.url("localhost", "verify-full"),
        pg.ca_file().display()
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> =
        (0..3).map(|i| Server::with_storage(dirs[i].path(), &format!("node_id = \"kb-{i}\"\n{block}"))).collect();
    let (root, key) = init_unseal(&nodes[0]);
    for n in &nodes[1..] {
        ok(&n.cli(None, &["operator", "unseal", &key]));
    }
    let cluster = Arc::new(Cluster { nodes, up: Mutex::new(vec![true; 3]) });
    let a = &cluster.nodes[0];
    let t = root.as_str();
    // AWS, a rule replicating secret/rep/ and one for the rotated secret.
    let mut args = vec!["mount", "enable", "--type", "aws", "aws/"];
    let settings = crate::harness::aws_settings(&moto);
    args.extend(settings.iter().map(String::as_str));
    ok(&a.cli(Some(t), &args));
    for (rule, folder) in [("rep", "rep"), ("rot", "rot")] {
        let (src, dst) = (format!("secret/{folder}/"), format!("aws/{folder}/"));
        ok(&a.cli(Some(t), &["sync", "rule", "create", rule, "--source", &src, "--target", &dst]));
    }
    ok(&a.cli(Some(t), &["kv", "put", "secret/rot/db", "user=app", "password=before-rotation"]));
    // JWT logins.
    ok(&a.cli(Some(t), &["auth", "enable", "jwt", "--path", "ci"]));
    ok(&a.cli(
        Some(t),
        &["auth", "config", "write", "ci", &format!("jwks=@{}", jwks.display()), &format!("bound_issuer={ISS}")],
    ));
    ok(&a.cli(
        Some(t),
        &[
            "auth",
            "role",
            "write",
            "ci",
            "deploy",
            "bound_audiences=kb",
            "user_claim=sub",
            "policies=default",
            "ttl=1h",
        ],
    ));
    // Engine credentials with 3 s leases: the leader's expiry revokes them
    // at the service while the nodes die and pause.
    let (file, sha) = crate::plugins::plugin("saas");
    ok(&a.cli(Some(t), &["plugin", "register", "saas", "--sha256", &sha, &file]));
    let allowed = format!("allowed_hosts={}", saas.addr);
    // A generous time limit: a revocation cut short on a loaded machine is
    // asked again, which the test counts.
    ok(&a.cli(Some(t), &["mount", "enable", "--type", "plugin", "--plugin", "saas", "saas/", &allowed, "timeout=10s"]));
    ok(&a
        .cli(Some(t), &["write", "saas/config", &format!("url={}", saas.url()), "admin_token=admin-secret", "ttl=3s"]));
    // Everything is known to every node before the load starts.
    for n in &cluster.nodes {
        assert!(
            within(Duration::from_secs(5), || n.cli(Some(t), &["kv", "get", "secret/rot/db"]).status.success())
                .is_some()
        );
    }

    let record = Arc::new(Mutex::new(Record::default()));
    let jwt = |sub: &str| {
        ci.sign(&serde_json::json!({"iss": ISS, "aud": "kb", "sub": sub, "iat": now(), "exp": now() + 900}))
    };
    let jwts: Arc<Vec<String>> = Arc::new((0..600).map(|i| jwt(&format!("job-{i}"))).collect());

    // (a) The leader is killed in the middle of a replication (the writes
    // go on) and of a rotation (just started).
    let load = Load::start(&cluster, &record, &root, &jwts);
    std::thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader().expect("no leader");
    let other = (leader + 1) % 3;
    ok(&cluster.nodes[other].cli(Some(t), &["rotate", "secret/rot/db", "--grace", "0s"]));
    cluster.set_up(leader, false);
    cluster.signal(leader, libc::SIGKILL);
    let killed = Instant::now();
    let took = within(Duration::from_secs(2 + 5), || cluster.leader().is_some()).expect("no new leader after the kill");
    eprintln!(
        "(a) a new leader {:?} after SIGKILL (lease 2 s)",
        killed.elapsed().min(took + Duration::from_millis(50))
    );
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    check(&cluster, &record, &moto, t, "(a)");
    // The rotation ended with every copy on one new value.
    let live = cluster.live();
    let rot = within(Duration::from_secs(30), || {
        json(&live[0].cli(Some(t), &["sync", "rotation", "-o", "json", "secret/rot/db"]))["state"] == "done"
    });
    let st = json(&live[0].cli(Some(t), &["sync", "rotation", "-o", "json", "secret/rot/db"]));
    assert!(rot.is_some(), "the rotation did not finish: {st}");
    let src = json(&live[1].cli(Some(t), &["kv", "get", "-o", "json", "secret/rot/db"]))["data"]["password"].clone();
    assert_ne!(src, "before-rotation");
    let copy = json(&live[0].cli(Some(t), &["kv", "get", "-o", "json", "aws/rot/db"]))["data"]["password"].clone();
    assert_eq!(copy, src, "the rotated copies differ");

    // (b) The new leader is paused past its lease, then resumed.
    let load = Load::start(&cluster, &record, &root, &jwts);
    std::thread::sleep(Duration::from_secs(1));
    let paused = cluster.leader().expect("no leader");
    cluster.set_up(paused, false);
    cluster.signal(paused, libc::SIGSTOP);
    let took = within(Duration::from_secs(2 + 5), || cluster.leader().is_some());
    let took = took.expect("no new leader while the leader was paused");
    eprintln!("(b) a new leader {took:?} after SIGSTOP (lease 2 s)");
    std::thread::sleep(Duration::from_secs(1));
    cluster.signal(paused, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    cluster.set_up(paused, true);
    assert!(
        within(Duration::from_secs(5), || {
            json(&cluster.nodes[paused].cli(None, &["operator", "status", "-o", "json"]))["leader"] == false
        })
        .is_some(),
        "the resumed node still leads"
    );
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    check(&cluster, &record, &moto, t, "(b)");

    // (c) PostgreSQL restarts under the load.
    let load = Load::start(&cluster, &record, &root, &jwts);
    std::thread::sleep(Duration::from_secs(1));
    pg.stop();
    std::thread::sleep(Duration::from_secs(1));
    pg.start_again();
    let took = within(Duration::from_secs(2 + 5 + 5), || cluster.leader().is_some());
    eprintln!("(c) a leader {took:?} after PostgreSQL came back");
    assert!(took.is_some(), "no leader after the restart");
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    check(&cluster, &record, &moto, t, "(c)");

    let record = std::mem::take(&mut *record.lock().unwrap());
    let live = cluster.live();
    eprintln!(
        "load: {} writes ({} refused), {} logins ({} refused), {} credentials ({} refused)",
        record.writes.values().map(|w| w.0.len()).sum::<usize>(),
        record.refused_writes,
        record.logins.len(),
        record.refused_logins,
        record.creds.len(),
        record.refused_creds
    );
    eprintln!("login refusals, the first: {:?}", record.login_errors);
    assert!(record.logins.len() > 10 && record.creds.len() > 10, "the loops did too little");

    // Every credential's lease expires and is revoked at the service: none
    // is lost.
    let issued = record.creds.len() as u64;
    let gone = within(Duration::from_secs(60), || saas.live_keys() == 0);
    assert!(gone.is_some(), "{} of the keys were never revoked", saas.live_keys());
    // Keys the service created but the gateway never handed out (its lease
    // could not be recorded: the store was down, the node died) were
    // revoked too. A revocation in flight when its leader died or was
    // paused, or whose answer was lost, is asked again of the service
    // (which answers 404): at most one pass's worth per mount (16) for each
    // of the kill and the pause. One the store could not record is not.
    let created = saas.created();
    let repeated = saas.deletes() - created;
    eprintln!(
        "credentials: {issued} handed out, {created} created at the service, all revoked; {repeated} revocations asked again"
    );
    assert!(repeated <= 2 * 16, "{repeated} revocations asked twice of the service");
    // A revocation whose answer was lost is retried with backoff: its lease
    // record goes at the retry (the service then answers 404).
    let drained = within(Duration::from_secs(60), || {
        json(&live[0].cli(Some(t), &["lease", "list", "-o", "json"])) == Value::Array(vec![])
    });
    assert!(drained.is_some(), "{}", json(&live[0].cli(Some(t), &["lease", "list", "-o", "json"])));
}
