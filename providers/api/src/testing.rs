//! The provider contract suite (cargo feature `testing`): [`exercise`] runs
//! every [`SecretStore`] operation against one adapter and its emulator,
//! and checks what the gateway relies on, branching on the cloud's
//! [`Capabilities`] where clouds legitimately differ. Each adapter's tests
//! call it once against a fresh emulator; what is particular to one cloud
//! (its settings, errors, naming, storage format) stays in that adapter's
//! own tests.
//!
//! Names start with [`PREFIX`] and use only `a-z`, `0-9` and `-`, which
//! every cloud takes as they are.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use crate::capabilities::Capabilities;
use crate::{
    CloudValue, Deletion, Error, Listed, Precondition, Result, SecretStore, Selector, VersionChange, VersionInfo,
    VersionState,
};

/// What every name the suite writes starts with.
pub const PREFIX: &str = "kbsuite-";

/// Where the emulator under test falls short of the cloud's contract: the
/// suite leaves out just those checks. `Gaps::default()` leaves out none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// The listing ignores the page size (drongo).
    pub page_size: bool,
    /// Custom metadata is not kept (drongo keeps labels, not annotations).
    pub tags: bool,
    /// A secret scheduled for deletion still takes new versions (moto; AWS
    /// and Key Vault refuse them while the name is held).
    pub writes_while_deleted: bool,
}

/// Runs the contract suite against `store`, whose cloud can do what `caps`
/// says (`store.cloud().capabilities()` for a faithful emulator); panics at
/// the first broken promise. The store should be empty of [`PREFIX`] names.
pub async fn exercise(store: &dyn SecretStore, caps: Capabilities, gaps: Gaps) {
    let t = Suite { s: store, caps, gaps, live: BTreeSet::new() };
    t.run().await;
}

struct Suite<'a> {
    s: &'a dyn SecretStore,
    caps: Capabilities,
    gaps: Gaps,
    /// The suite's secrets that exist (and are not scheduled for deletion).
    live: BTreeSet<String>,
}

fn name(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

fn text(s: &str) -> CloudValue {
    CloudValue::text(s)
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const BYTES: [u8; 5] = [0, 159, 146, 150, 255];

/// A key `stage` takes: 32 hex digits.
const KEY1: &str = "0123456789abcdef0123456789abcdef";
const KEY2: &str = "fedcba9876543210fedcba9876543210";

#[track_caller]
fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

#[track_caller]
fn conflict<T: std::fmt::Debug>(r: Result<T>, what: &str) {
    match r {
        Err(Error::Conflict(m)) if m.contains("check-and-set failed") => {}
        other => panic!("{what}: a check-and-set conflict expected, got {other:?}"),
    }
}

#[track_caller]
fn not_found<T: std::fmt::Debug>(r: Result<T>, what: &str) {
    assert!(matches!(r, Err(Error::NotFound(_))), "{what}: NotFound expected, got {r:?}");
}

#[track_caller]
fn as_text(v: &CloudValue) -> &str {
    v.as_str().unwrap_or_else(|| panic!("a string value expected, got {v:?}"))
}

impl Suite<'_> {
    async fn run(mut self) {
        ok(self.s.check().await, "check");
        self.check_and_set().await;
        self.reads().await;
        self.binary().await;
        self.tags().await;
        self.numbered().await;
        self.listing().await;
        self.versions().await;
        self.rotation().await;
        self.deletion().await;
    }

    /// The refusal of what the cloud cannot do, naming it and the cloud.
    #[track_caller]
    fn unsupported<T: std::fmt::Debug>(&self, r: Result<T>, what: &str) {
        match r {
            Err(Error::Unsupported { provider, capability }) => {
                assert_eq!(provider, self.s.cloud().name(), "{what}: the refusal names the cloud");
                assert!(!capability.is_empty(), "{what}: the refusal names the capability");
            }
            other => panic!("{what}: Unsupported expected, got {other:?}"),
        }
    }

    async fn value(&self, name: &str, at: &Selector) -> String {
        as_text(&ok(self.s.get(name, at).await, &format!("get {name} at {at:?}")).value).to_string()
    }

    async fn put(&mut self, name: &str, value: &str, pre: Precondition) -> VersionInfo {
        let v = ok(self.s.put(name, &text(value), &pre, None).await, &format!("put {name} ({pre:?})"));
        self.live.insert(name.to_string());
        v
    }

    async fn describe_tags(&self, name: &str) -> BTreeMap<String, String> {
        ok(self.s.describe(name).await, &format!("describe {name}")).tags
    }

    /// Versions by id, as `describe` shows them.
    async fn version(&self, name: &str, id: &str) -> VersionInfo {
        let info = ok(self.s.describe(name).await, &format!("describe {name}"));
        info.versions.into_iter().find(|v| v.id == id).unwrap_or_else(|| panic!("{name} has no version {id}"))
    }

    /// Every listed secret of the suite's, by name; checks the paging.
    async fn list_all(&self, page_size: usize) -> BTreeMap<String, Listed> {
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        let (mut pages, mut all) = (0, 0);
        loop {
            let page = ok(self.s.list(page_size, token.as_deref()).await, "list");
            pages += 1;
            all += page.items.len();
            assert!(
                self.gaps.page_size || page.items.len() <= page_size,
                "a page of {} items, asked for {page_size}",
                page.items.len()
            );
            for item in page.items.into_iter().filter(|i| i.name.starts_with(PREFIX)) {
                let name = item.name.clone();
                assert!(out.insert(name.clone(), item).is_none(), "{name} listed twice");
            }
            assert!(pages <= 1000, "the listing never ends");
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if !self.gaps.page_size {
            // The emulators fill every page but the last.
            assert_eq!(pages, all.div_ceil(page_size).max(1), "{all} names in pages of {page_size}");
        }
        assert_eq!(out.keys().cloned().collect::<BTreeSet<_>>(), self.live, "the listing shows the live secrets");
        out
    }

    /// Each precondition, the stale check-and-set included; a refused write
    /// writes nothing.
    async fn check_and_set(&mut self) {
        let a = name("cas");
        assert!(ok(self.s.head(&a).await, "head of a missing secret").is_none());
        let v1 = ok(
            self.s.put(&a, &text("one"), &Precondition::Absent, Some(&tags(&[("owner", "team-a")]))).await,
            "create",
        );
        self.live.insert(a.clone());
        assert_eq!(v1.number, Some(1), "the first version is number 1");
        assert!(!v1.id.is_empty());
        if self.caps.native_numbers {
            assert_eq!(v1.id, "1", "the cloud's own number is the version id");
        } else {
            assert_ne!(v1.id, "1", "Keybridge's number is kept beside the cloud's id");
        }
        conflict(
            self.s.put(&a, &text("again"), &Precondition::Absent, None).await,
            "create-only on an existing secret",
        );
        let v2 = self.put(&a, "two", Precondition::CurrentIs(v1.id.clone())).await;
        assert_eq!(v2.number, Some(2));
        assert_ne!(v1.id, v2.id);
        conflict(self.s.put(&a, &text("stale"), &Precondition::CurrentIs(v1.id.clone()), None).await, "stale id");
        conflict(self.s.put(&a, &text("stale"), &Precondition::CurrentNumber(1), None).await, "stale number");
        let v3 = self.put(&a, "three", Precondition::CurrentNumber(2)).await;
        assert_eq!(v3.number, Some(3));
        let info = ok(self.s.describe(&a).await, "describe");
        assert_eq!(info.versions.len(), 3, "refused writes wrote nothing: {info:?}");
        assert_eq!(self.value(&a, &Selector::Current).await, "three");

        let missing = name("never");
        conflict(self.s.put(&missing, &text("x"), &Precondition::CurrentIs(v1.id.clone()), None).await, "id, missing");
        conflict(self.s.put(&missing, &text("x"), &Precondition::CurrentNumber(1), None).await, "number, missing");
        not_found(self.s.describe(&missing).await, "a refused write created nothing");

        // Without a precondition: creates, then updates.
        let n = name("none");
        assert_eq!(self.put(&n, "n1", Precondition::None).await.number, Some(1));
        assert_eq!(self.put(&n, "n2", Precondition::None).await.number, Some(2));
        assert_eq!(self.value(&n, &Selector::Current).await, "n2");
    }

    /// Every selector, and what `describe` shows of the versions.
    async fn reads(&self) {
        let a = name("cas");
        let info = ok(self.s.describe(&a).await, "describe");
        assert_eq!(info.name, a);
        assert_eq!(info.deletion, None);
        assert_eq!(info.versions.iter().map(|v| v.number).collect::<Vec<_>>(), [Some(1), Some(2), Some(3)]);
        assert!(info.versions.iter().all(|v| v.state == VersionState::Enabled), "{info:?}");
        if !self.gaps.tags {
            assert_eq!(info.tags, tags(&[("owner", "team-a")]), "tags given on creation");
        }
        let values = ["one", "two", "three"];
        let cur = ok(self.s.get(&a, &Selector::Current).await, "get current");
        assert_eq!(
            (as_text(&cur.value), &cur.version.id, cur.version.number),
            ("three", &info.versions[2].id, Some(3))
        );
        for (v, want) in info.versions.iter().zip(values) {
            let read = ok(self.s.get(&a, &Selector::Version(v.id.clone())).await, "get by id");
            assert_eq!((as_text(&read.value), &read.version.id), (want, &v.id));
            let read = ok(self.s.get(&a, &Selector::Number(v.number.unwrap_or(0))).await, "get by number");
            assert_eq!((as_text(&read.value), read.version.number), (want, v.number));
        }
        not_found(self.s.get(&a, &Selector::Number(99)).await, "a number no version has");
        not_found(self.s.get(&name("missing"), &Selector::Current).await, "get of a missing secret");
        not_found(self.s.describe(&name("missing")).await, "describe of a missing secret");

        if self.caps.stages {
            // Whatever stages the versions carry select them.
            for (v, want) in info.versions.iter().zip(values) {
                for stage in &v.stages {
                    assert_eq!(self.value(&a, &Selector::Stage(stage.clone())).await, want, "stage {stage}");
                }
            }
            if self.caps.stages_natively {
                assert!(!cur.version.stages.is_empty(), "the current version carries its stage: {cur:?}");
                assert!(!info.versions[1].stages.is_empty(), "the previous version carries its stage: {info:?}");
            }
            not_found(self.s.get(&a, &Selector::Stage(name("no-such-stage"))).await, "an unknown stage");
        } else {
            self.unsupported(self.s.get(&a, &Selector::Stage("AWSCURRENT".into())).await, "get by stage");
        }
    }

    /// Bytes come back as bytes; text, base64-like or not, as text.
    async fn binary(&mut self) {
        let b = name("binary");
        let bytes = CloudValue::Binary(Zeroizing::new(BYTES.to_vec()));
        let v1 = ok(self.s.put(&b, &bytes, &Precondition::None, None).await, "put bytes");
        self.live.insert(b.clone());
        for at in [Selector::Current, Selector::Version(v1.id.clone())] {
            match ok(self.s.get(&b, &at).await, "get bytes").value {
                CloudValue::Binary(got) => assert_eq!(*got, BYTES, "at {at:?}"),
                other => panic!("bytes expected at {at:?}, got {other:?}"),
            }
        }
        for s in ["AJ+Slv8=", "pässwörd ✓", r#"{"user":"alice"}"#] {
            self.put(&b, s, Precondition::None).await;
            assert_eq!(self.value(&b, &Selector::Current).await, s);
        }
        match ok(self.s.get(&b, &Selector::Version(v1.id)).await, "get old bytes").value {
            CloudValue::Binary(got) => assert_eq!(*got, BYTES),
            other => panic!("bytes expected, got {other:?}"),
        }
    }

    /// `set_tags` replaces the secret's metadata; `head` shows it with the
    /// current version; new versions keep it.
    async fn tags(&mut self) {
        let a = name("cas");
        let (cur, head_tags) = ok(self.s.head(&a).await, "head").expect("head of an existing secret");
        assert_eq!(
            (cur.id.as_str(), cur.number),
            (ok(self.s.get(&a, &Selector::Current).await, "get").version.id.as_str(), Some(3))
        );
        assert_eq!(head_tags, self.describe_tags(&a).await, "head and describe agree");
        ok(self.s.set_tags(&a, &tags(&[("owner", "team-b"), ("tier", "gold")])).await, "set tags");
        ok(self.s.set_tags(&a, &tags(&[("tier", "gold")])).await, "set tags again");
        let want = tags(&[("tier", "gold")]);
        if !self.gaps.tags {
            assert_eq!(self.describe_tags(&a).await, want, "set_tags replaces the tags");
        }
        assert_eq!(ok(self.s.get(&a, &Selector::Current).await, "get").version.number, Some(3), "tags make no version");
        let v4 = self.put(&a, "four", Precondition::None).await;
        assert_eq!(v4.number, Some(4));
        let (cur, head_tags) = ok(self.s.head(&a).await, "head").expect("head");
        assert_eq!((cur.id, cur.number), (v4.id, Some(4)));
        if !self.gaps.tags {
            assert_eq!(self.describe_tags(&a).await, want, "a new version keeps the tags");
            assert_eq!(head_tags, want);
        }
        not_found(self.s.set_tags(&name("missing"), &want).await, "set_tags on a missing secret");
    }

    /// `put_numbered`: creates with tags, then adds the next number.
    async fn numbered(&mut self) {
        let p = name("numbered");
        let owner = tags(&[("owner", "team-c")]);
        let v1 = ok(self.s.put_numbered(&p, &text("p1"), 1, Some(&owner)).await, "put_numbered on a missing secret");
        self.live.insert(p.clone());
        assert_eq!(v1.number, Some(1));
        let v2 = ok(self.s.put_numbered(&p, &text("p2"), 2, None).await, "put_numbered");
        assert_eq!(v2.number, Some(2));
        assert_eq!(self.value(&p, &Selector::Current).await, "p2");
        assert_eq!(self.value(&p, &Selector::Number(1)).await, "p1");
        if !self.gaps.tags {
            assert_eq!(self.describe_tags(&p).await, owner, "tags on creation, kept");
        }
    }

    /// Paging, listed tags, and the markers the reconciler compares with
    /// what `marker` said of the version it wrote.
    async fn listing(&mut self) {
        for i in 0..5 {
            self.put(&name(&format!("page-{i}")), "x", Precondition::None).await;
        }
        let a = name("cas");
        let (cur, _) = ok(self.s.head(&a).await, "head").expect("head");
        let listed = self.list_all(2).await;
        let item = &listed[&a];
        if !self.gaps.tags {
            assert_eq!(item.tags, tags(&[("tier", "gold")]), "the listing shows the tags");
        }
        if self.caps.lists_markers {
            assert!(item.marker.is_some(), "the listing shows a marker: {item:?}");
            assert_eq!(item.marker, self.s.marker(&cur), "the listed marker is the current version's");
        } else {
            assert!(listed.values().all(|l| l.marker.is_none()), "no markers: {listed:?}");
        }
        // A write's own answer gives the marker the listing will show.
        let m = name("page-0");
        let before = self.s.marker(&ok(self.s.head(&m).await, "head").expect("head").0);
        let v = self.put(&m, "y", Precondition::None).await;
        let listed = self.list_all(100).await;
        if self.caps.lists_markers {
            assert_eq!(listed[&m].marker, self.s.marker(&v), "the marker of a version just written");
        }
        if self.caps.exact_markers {
            assert_ne!(before, self.s.marker(&v), "exact markers tell versions apart");
        }
    }

    /// Soft delete, undelete and destroy of single versions, as the cloud
    /// allows; the refusal where it does not.
    async fn versions(&mut self) {
        let n = name("versions");
        let v1 = self.put(&n, "v1", Precondition::None).await;
        self.put(&n, "v2", Precondition::None).await;
        if self.caps.version_soft_delete {
            ok(self.s.change_version(&n, &v1.id, VersionChange::Disable).await, "disable");
            assert_eq!(self.version(&n, &v1.id).await.state, VersionState::Disabled);
            for at in [Selector::Version(v1.id.clone()), Selector::Number(1)] {
                let r = self.s.get(&n, &at).await;
                assert!(matches!(r, Err(Error::NotFound(_))), "a disabled version is unreadable (NotFound): {r:?}");
            }
            assert_eq!(self.value(&n, &Selector::Current).await, "v2");
            ok(self.s.change_version(&n, &v1.id, VersionChange::Enable).await, "enable");
            assert_eq!(self.version(&n, &v1.id).await.state, VersionState::Enabled);
        } else {
            self.unsupported(self.s.change_version(&n, &v1.id, VersionChange::Disable).await, "disable");
            self.unsupported(self.s.change_version(&n, &v1.id, VersionChange::Enable).await, "enable");
        }
        assert_eq!(self.value(&n, &Selector::Number(1)).await, "v1");
        if self.caps.version_destroy {
            ok(self.s.change_version(&n, &v1.id, VersionChange::Destroy).await, "destroy");
            assert_eq!(self.version(&n, &v1.id).await.state, VersionState::Destroyed);
            let r = self.s.get(&n, &Selector::Version(v1.id.clone())).await;
            assert!(matches!(r, Err(Error::NotFound(_))), "a destroyed version is gone (NotFound): {r:?}");
        } else {
            self.unsupported(self.s.change_version(&n, &v1.id, VersionChange::Destroy).await, "destroy");
            assert_eq!(self.value(&n, &Selector::Number(1)).await, "v1");
        }
        assert_eq!(self.value(&n, &Selector::Current).await, "v2");
    }

    /// What a rotation does: stage, unstage, promote and retire where the
    /// cloud stages natively; elsewhere the refusal, and `retire` disables.
    async fn rotation(&mut self) {
        let r = name("rotation");
        let old = self.put(&r, "old", Precondition::None).await;
        if !self.caps.stages_natively {
            self.unsupported(self.s.stage(&r, &text("new"), KEY1).await, "stage");
            self.unsupported(self.s.promote(&r, &old.id).await, "promote");
            self.unsupported(self.s.unstage(&r, &old.id).await, "unstage");
            let new = self.put(&r, "new", Precondition::None).await;
            if self.caps.version_soft_delete {
                ok(self.s.retire(&r, &old.id).await, "retire");
                assert_eq!(self.version(&r, &old.id).await.state, VersionState::Disabled, "retire disables");
                assert_eq!(self.version(&r, &new.id).await.state, VersionState::Enabled);
            } else {
                self.unsupported(self.s.retire(&r, &old.id).await, "retire without soft delete");
            }
            assert_eq!(self.value(&r, &Selector::Current).await, "new");
            return;
        }
        // Staged: readers of the current version do not get it; the same
        // key finds the same version again.
        let staged = ok(self.s.stage(&r, &text("new"), KEY1).await, "stage");
        assert_eq!(staged.number, Some(2));
        assert_ne!(staged.id, old.id);
        let label =
            staged.stages.first().cloned().unwrap_or_else(|| panic!("a staged version has a stage: {staged:?}"));
        assert_eq!(self.value(&r, &Selector::Current).await, "old");
        assert_eq!(self.value(&r, &Selector::Version(staged.id.clone())).await, "new");
        assert_eq!(self.value(&r, &Selector::Stage(label.clone())).await, "new");
        assert_eq!(ok(self.s.stage(&r, &text("new"), KEY1).await, "stage again").id, staged.id, "idempotent");
        assert_eq!(ok(self.s.describe(&r).await, "describe").versions.len(), 2);
        // Unstaged (a rotation rolled back): the label goes.
        ok(self.s.unstage(&r, &staged.id).await, "unstage");
        assert!(!self.version(&r, &staged.id).await.stages.contains(&label), "unstaged");
        assert_eq!(self.value(&r, &Selector::Current).await, "old");
        not_found(self.s.get(&r, &Selector::Stage(label.clone())).await, "no version is staged");
        // Promoted: current, without its staging label; again is a no-op.
        let next = ok(self.s.stage(&r, &text("newer"), KEY2).await, "stage");
        assert_eq!(next.number, Some(3));
        for _ in 0..2 {
            ok(self.s.promote(&r, &next.id).await, "promote");
            let cur = ok(self.s.get(&r, &Selector::Current).await, "get");
            assert_eq!((as_text(&cur.value), &cur.version.id), ("newer", &next.id));
            assert!(!self.version(&r, &next.id).await.stages.contains(&label), "promoted");
        }
        let (head, _) = ok(self.s.head(&r).await, "head").expect("head");
        assert_eq!(head.id, next.id);
        assert!(!self.version(&r, &old.id).await.stages.is_empty(), "the old version is labelled previous");
        // Retired: the old version loses its label; again is a no-op.
        for _ in 0..2 {
            ok(self.s.retire(&r, &old.id).await, "retire");
            assert!(self.version(&r, &old.id).await.stages.is_empty(), "retired");
        }
        assert_eq!(self.value(&r, &Selector::Current).await, "newer");
        if self.caps.lists_markers {
            let listed = self.list_all(100).await;
            assert_eq!(listed[&r].marker, self.s.marker(&head), "the listing shows the promoted version");
        }
    }

    /// Recoverable deletion and restore, purge, and the name free again.
    async fn deletion(&mut self) {
        let d = name("page-1");
        if self.caps.recoverable_delete {
            ok(self.s.delete(&d, Deletion::Recoverable { days: 7 }).await, "delete recoverably");
            self.live.remove(&d);
            assert!(ok(self.s.head(&d).await, "head").is_none(), "a deleted secret has no head");
            let r = self.s.get(&d, &Selector::Current).await;
            assert!(matches!(r, Err(Error::NotFound(_))), "a deleted secret cannot be read (NotFound): {r:?}");
            match self.s.describe(&d).await {
                Ok(info) => assert!(info.deletion.is_some(), "scheduled for deletion: {info:?}"),
                Err(e) => assert!(matches!(e, Error::NotFound(_)), "{e:?}"),
            }
            if !self.gaps.writes_while_deleted {
                let e = self.s.put(&d, &text("again"), &Precondition::None, None).await;
                assert!(matches!(e, Err(Error::Conflict(_))), "the name is held while recoverable: {e:?}");
            }
            self.list_all(100).await;
            ok(self.s.restore(&d).await, "restore");
            self.live.insert(d.clone());
            assert_eq!(self.value(&d, &Selector::Current).await, "x");
            assert!(ok(self.s.head(&d).await, "head").is_some());
            not_found(self.s.restore(&name("never")).await, "restore of a secret never deleted");
        } else {
            self.unsupported(self.s.delete(&d, Deletion::Recoverable { days: 7 }).await, "delete recoverably");
            self.unsupported(self.s.restore(&d).await, "restore");
            assert_eq!(self.value(&d, &Selector::Current).await, "x", "nothing was deleted");
        }
        if self.caps.purge {
            ok(self.s.delete(&d, Deletion::Purge).await, "purge");
            self.live.remove(&d);
            not_found(self.s.get(&d, &Selector::Current).await, "get after purge");
            not_found(self.s.describe(&d).await, "describe after purge");
            assert!(ok(self.s.head(&d).await, "head").is_none());
            self.list_all(100).await;
            let v = ok(self.s.put(&d, &text("fresh"), &Precondition::Absent, None).await, "the name is free again");
            self.live.insert(d.clone());
            assert_eq!(v.number, Some(1), "numbers start again");
            assert_eq!(self.value(&d, &Selector::Current).await, "fresh");
        } else {
            self.unsupported(self.s.delete(&d, Deletion::Purge).await, "purge");
        }
        self.list_all(100).await;
    }
}
