//! What each cloud can do, as the gateway's API sees it. The gateway
//! answers an operation a cloud cannot do with UNIMPLEMENTED naming the
//! provider and the capability; the conformance suite runs against this
//! table, and README.md shows it.

use crate::names::Cloud;

/// How the gateway's check-and-set is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckAndSet {
    /// Read the current version, then write: exact against writers going
    /// through this gateway (one writer per secret at a time), racy against
    /// writers outside it. No cloud here has a conditional write of values.
    ReadThenWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryValues {
    Native,
    /// Stored as base64 with a content type that marks it; read back as bytes.
    Base64Marked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Version numbers: true when the cloud numbers versions itself.
    pub native_numbers: bool,
    /// Staging labels (AWS) or aliases (GCP) usable as selectors.
    pub stages: bool,
    pub check_and_set: CheckAndSet,
    /// Soft-deleting and undeleting single versions (Azure's `enabled`
    /// attribute, GCP's disable/enable).
    pub version_soft_delete: bool,
    /// Destroying single versions for good.
    pub version_destroy: bool,
    /// Deleting a whole secret recoverably, and restoring it.
    pub recoverable_delete: bool,
    /// Deleting a whole secret for good at once.
    pub purge: bool,
    /// Custom metadata kept by the cloud.
    pub metadata: &'static str,
    pub binary: BinaryValues,
    /// The listing shows a marker of each secret's current version
    /// ([`Listed::marker`](crate::Listed::marker), equal to
    /// [`SecretStore::marker`](crate::SecretStore::marker) of that version),
    /// so a scan needs no call per secret: AWS's current version id, Azure's
    /// update time. GCP's listing says nothing of versions.
    pub lists_markers: bool,
    /// The listed marker tells every version apart (AWS's version ids).
    /// Azure's update time has one-second resolution: an edit in the same
    /// second as Keybridge's write shows the same marker, so a deep scan
    /// describes each secret instead.
    pub exact_markers: bool,
    /// The cloud stages versions itself (AWS's AWSPENDING label):
    /// [`SecretStore::stage`](crate::SecretStore::stage), `promote` and
    /// `unstage` work; elsewhere a rotation stages its value beside the
    /// secret, and `retire` disables the old version.
    pub stages_natively: bool,
}

impl Cloud {
    pub fn capabilities(self) -> Capabilities {
        match self {
            Cloud::Aws => Capabilities {
                native_numbers: false,
                stages: true,
                check_and_set: CheckAndSet::ReadThenWrite,
                version_soft_delete: false,
                version_destroy: false,
                recoverable_delete: true,
                purge: true,
                metadata: "secret tags",
                binary: BinaryValues::Native,
                lists_markers: true,
                exact_markers: true,
                stages_natively: true,
            },
            Cloud::Azure => Capabilities {
                native_numbers: false,
                stages: false,
                check_and_set: CheckAndSet::ReadThenWrite,
                version_soft_delete: true,
                version_destroy: false,
                recoverable_delete: true,
                purge: true,
                metadata: "tags of the current version (carried to each new version)",
                binary: BinaryValues::Base64Marked,
                lists_markers: true,
                exact_markers: false,
                stages_natively: false,
            },
            Cloud::Gcp => Capabilities {
                native_numbers: true,
                stages: true,
                check_and_set: CheckAndSet::ReadThenWrite,
                version_soft_delete: true,
                version_destroy: true,
                recoverable_delete: false,
                purge: true,
                metadata: "secret annotations",
                binary: BinaryValues::Native,
                lists_markers: false,
                exact_markers: false,
                stages_natively: false,
            },
        }
    }

    /// Bytes a value takes in the cloud (Azure keeps bytes as base64).
    pub fn stored_len(self, value_len: usize, binary: bool) -> usize {
        if binary && self.capabilities().binary == BinaryValues::Base64Marked {
            value_len.div_ceil(3) * 4
        } else {
            value_len
        }
    }
}
