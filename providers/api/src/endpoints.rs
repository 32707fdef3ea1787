//! Where a mount's settings point the adapter, and which of those places
//! are the cloud's own.
//!
//! Ambient credentials (the AWS default chain or a profile, GCP's
//! Application Default Credentials, Azure managed or workload identity)
//! belong to the gateway's host, not to whoever writes a mount: they may only
//! be sent to the cloud's own endpoints. A mount pointed anywhere else must
//! carry credentials of its own, given with the endpoint.

use std::collections::BTreeMap;

use crate::names::Cloud;

impl Cloud {
    /// The settings that choose a host the adapter talks to.
    pub fn endpoint_settings(self) -> &'static [&'static str] {
        match self {
            Cloud::Aws => &["endpoint_url"],
            Cloud::Azure => &["vault_url", "authority_host"],
            Cloud::Gcp => &["endpoint"],
        }
    }

    /// The settings that carry credentials (or name whose they are): they
    /// go together with the endpoint they were given for.
    pub fn credential_settings(self) -> &'static [&'static str] {
        match self {
            Cloud::Aws => &["access_key_id", "secret_access_key", "session_token", "profile"],
            Cloud::Azure => &["tenant_id", "client_id", "client_secret", "credentials"],
            Cloud::Gcp => &["credentials"],
        }
    }

    /// Whether `host` is one of the cloud's own service hosts for the
    /// endpoint setting `key` (public, China and government clouds). Not a
    /// domain suffix: `*.amazonaws.com` also holds API Gateway and load
    /// balancer names anyone can point at their own server.
    pub fn owns_host(self, key: &str, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let region = |r: &str| {
            !r.is_empty()
                && r.contains('-')
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match (self, key) {
            // secretsmanager[-fips].<region>.amazonaws.com[.cn] or .api.aws
            (Cloud::Aws, _) => match labels.as_slice() {
                [svc, r, "amazonaws", "com"] | [svc, r, "amazonaws", "com", "cn"] | [svc, r, "api", "aws"] => {
                    matches!(*svc, "secretsmanager" | "secretsmanager-fips") && region(r)
                }
                _ => false,
            },
            // secretmanager.googleapis.com, or a regional
            // secretmanager.<location>.rep.googleapis.com
            (Cloud::Gcp, _) => match labels.as_slice() {
                ["secretmanager", "googleapis", "com"] => true,
                ["secretmanager", r, "rep", "googleapis", "com"] => region(r),
                _ => false,
            },
            (Cloud::Azure, "authority_host") => {
                ["login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us"]
                    .contains(&host.as_str())
            }
            // Key Vault's domains: every name under them is a vault run by
            // Azure, whose tokens are scoped to Key Vault.
            (Cloud::Azure, _) => {
                [".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net", ".managedhsm.azure.net"]
                    .iter()
                    .any(|d| host.ends_with(d))
            }
        }
    }
}

/// An endpoint setting that points somewhere other than the cloud's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomEndpoint {
    pub setting: &'static str,
    /// The host, lowercased; a URL that does not parse reads as its text.
    pub host: String,
}

/// The endpoint settings in `settings` that are not the cloud's own hosts.
pub fn custom_endpoints(cloud: Cloud, settings: &BTreeMap<String, String>) -> Vec<CustomEndpoint> {
    cloud
        .endpoint_settings()
        .iter()
        .filter_map(|&setting| {
            let v = settings.get(setting).map(|v| v.trim()).filter(|v| !v.is_empty())?;
            // Fail closed: a URL this parser does not read the way an HTTP
            // client will (`http://evil:x.amazonaws.com` connects to `evil`)
            // is never one of the cloud's own.
            // The cloud's own: https on the default port to one of its
            // service hosts.
            let own = url::Url::parse(v).is_ok_and(|u| u.scheme() == "https" && u.port().is_none());
            match plain_host(v) {
                Some(host) if own && cloud.owns_host(setting, &host) => None,
                Some(host) => Some(CustomEndpoint { setting, host }),
                None => Some(CustomEndpoint { setting, host: v.to_ascii_lowercase() }),
            }
        })
        .collect()
}

/// The host of an endpoint URL that is plainly written: http(s), a host,
/// no user info, and the URL as given reads back the same (no percent
/// escapes or odd characters a client could read another way).
fn plain_host(v: &str) -> Option<String> {
    let u = url::Url::parse(v).ok()?;
    let plain = matches!(u.scheme(), "http" | "https")
        && u.username().is_empty()
        && u.password().is_none()
        && !v.contains(['%', '\\', '@'])
        && v.bytes().all(|b| b.is_ascii_graphic());
    plain.then(|| u.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase())).flatten()
}

/// A URL setting the adapters take: http(s) with a host, written plainly.
pub fn check_url(key: &str, v: &str) -> crate::store::Result<()> {
    if plain_host(v).is_none() {
        return Err(crate::store::Error::InvalidArgument(format!(
            "{key} {v:?} is not a plain http:// or https:// URL with a host (no user info, escapes or spaces)"
        )));
    }
    Ok(())
}

/// A setting that is not an endpoint but decides as much, because it uses
/// what belongs to the gateway's host: its own cloud identity (AWS's
/// default chain or a `profile`, GCP's Application Default Credentials,
/// Azure's managed, workload or developer identity), or a file on it
/// (Azure's `ca_cert`, a CA trusted for the mount's HTTPS and so for where
/// its tokens go; GCP's `credentials` as a key file's path, any key the
/// gateway can read). Credentials given with the mount (AWS keys, an Azure
/// client secret, GCP `anonymous` for emulators) are the writer's own. The
/// first such setting, if any (named even when it is absent and its
/// absence is what uses the host's identity).
pub fn privileged_setting(cloud: Cloud, settings: &BTreeMap<String, String>) -> Option<&'static str> {
    let given = |k: &str| settings.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    match cloud {
        Cloud::Azure if given("ca_cert").is_some() => Some("ca_cert"),
        Cloud::Azure => given("client_secret").is_none().then_some("credentials"),
        Cloud::Gcp => (given("credentials") != Some("anonymous")).then_some("credentials"),
        Cloud::Aws if given("profile").is_some() => Some("profile"),
        Cloud::Aws => given("access_key_id").is_none().then_some("access_key_id"),
    }
}

/// Refuses settings that point an endpoint elsewhere than the cloud's own
/// hosts unless they bring credentials of their own (`explicit`): the
/// gateway's ambient credentials go only to the cloud. `give` names the
/// settings that would.
pub fn refuse_ambient(
    cloud: Cloud,
    settings: &BTreeMap<String, String>,
    explicit: bool,
    give: &str,
) -> crate::store::Result<()> {
    match custom_endpoints(cloud, settings).first() {
        Some(custom) if !explicit => Err(crate::store::Error::InvalidArgument(format!(
            "{}: {} points at {}, which is not one of the cloud's own hosts; give {give} with it \
             (the gateway's own credentials are only sent to {}'s endpoints)",
            custom.setting,
            custom.setting,
            custom.host,
            cloud.name()
        ))),
        _ => Ok(()),
    }
}

/// A tune: when an endpoint setting changes, the credentials stored for the
/// old one are dropped unless `changes` gives them again.
pub fn drop_stale_credentials(
    cloud: Cloud,
    old: &BTreeMap<String, String>,
    changes: &BTreeMap<String, String>,
    config: &mut BTreeMap<String, String>,
) {
    let moved = cloud.endpoint_settings().iter().any(|k| changes.contains_key(*k) && changes.get(*k) != old.get(*k));
    if moved {
        for k in cloud.credential_settings() {
            if !changes.contains_key(*k) {
                config.remove(*k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_that_use_the_gateways_host_are_privileged() {
        let secret = ("client_secret", "s");
        assert_eq!(privileged_setting(Cloud::Azure, &s(&[secret, ("ca_cert", "/etc/ca.pem")])), Some("ca_cert"));
        assert_eq!(privileged_setting(Cloud::Azure, &s(&[secret, ("ca_cert", " ")])), None);
        assert_eq!(privileged_setting(Cloud::Azure, &s(&[("credentials", "managed_identity")])), Some("credentials"));
        assert_eq!(privileged_setting(Cloud::Azure, &s(&[("client_secret", " ")])), Some("credentials"));
        assert_eq!(privileged_setting(Cloud::Gcp, &s(&[("credentials", "/keys/sa.json")])), Some("credentials"));
        for ambient in ["default", " default", ""] {
            assert_eq!(
                privileged_setting(Cloud::Gcp, &s(&[("credentials", ambient)])),
                Some("credentials"),
                "{ambient:?}"
            );
        }
        assert_eq!(privileged_setting(Cloud::Gcp, &s(&[])), Some("credentials"));
        assert_eq!(privileged_setting(Cloud::Gcp, &s(&[("credentials", " anonymous ")])), None);
        assert_eq!(privileged_setting(Cloud::Aws, &s(&[])), Some("access_key_id"));
        assert_eq!(privileged_setting(Cloud::Aws, &s(&[("profile", "prod")])), Some("profile"));
        let keys = [("access_key_id", "AKIA"), ("secret_access_key", "x")];
        assert_eq!(privileged_setting(Cloud::Aws, &s(&keys)), None);
        assert_eq!(privileged_setting(Cloud::Aws, &s(&[keys[0], keys[1], ("profile", "prod")])), Some("profile"));
    }

    #[test]
    fn the_clouds_own_hosts_are_not_custom() {
        assert!(
            custom_endpoints(Cloud::Aws, &s(&[("endpoint_url", "https://secretsmanager.us-east-1.amazonaws.com")]))
                .is_empty()
        );
        assert!(custom_endpoints(Cloud::Gcp, &s(&[("endpoint", "https://secretmanager.googleapis.com")])).is_empty());
        assert!(
            custom_endpoints(
                Cloud::Azure,
                &s(&[
                    ("vault_url", "https://v.vault.azure.net"),
                    ("authority_host", "https://login.microsoftonline.com/")
                ])
            )
            .is_empty()
        );
        let c = custom_endpoints(Cloud::Aws, &s(&[("endpoint_url", "https://amazonaws.com.evil.example")]));
        assert_eq!(c, vec![CustomEndpoint { setting: "endpoint_url", host: "amazonaws.com.evil.example".into() }]);
        for own in [
            "https://secretsmanager-fips.us-gov-west-1.amazonaws.com",
            "https://secretsmanager.cn-north-1.amazonaws.com.cn",
            "https://secretsmanager.eu-west-1.api.aws:443",
        ] {
            assert!(custom_endpoints(Cloud::Aws, &s(&[("endpoint_url", own)])).is_empty(), "{own}");
        }
        assert!(
            custom_endpoints(Cloud::Gcp, &s(&[("endpoint", "https://secretmanager.me-central2.rep.googleapis.com")]))
                .is_empty()
        );
        // Under the cloud's domain but not its service, plain http, another port.
        for other in [
            "https://abc123.execute-api.us-east-1.amazonaws.com",
            "https://my-lb-1.us-east-1.elb.amazonaws.com",
            "http://secretsmanager.us-east-1.amazonaws.com",
            "https://secretsmanager.us-east-1.amazonaws.com:8443",
        ] {
            assert_eq!(custom_endpoints(Cloud::Aws, &s(&[("endpoint_url", other)])).len(), 1, "{other}");
        }
        for other in ["https://storage.googleapis.com", "https://evil.rep.googleapis.com"] {
            assert_eq!(custom_endpoints(Cloud::Gcp, &s(&[("endpoint", other)])).len(), 1, "{other}");
        }
        let c = custom_endpoints(
            Cloud::Azure,
            &s(&[("vault_url", "https://v.vault.azure.net"), ("authority_host", "https://127.0.0.1:9")]),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].setting, "authority_host");
    }

    #[test]
    fn moving_an_endpoint_drops_the_stored_credentials() {
        let old = s(&[("endpoint_url", "http://a"), ("access_key_id", "k"), ("secret_access_key", "s")]);
        let mut config = old.clone();
        let changes = s(&[("endpoint_url", "http://b")]);
        config.extend(changes.clone());
        drop_stale_credentials(Cloud::Aws, &old, &changes, &mut config);
        assert_eq!(config, s(&[("endpoint_url", "http://b")]));
        // Given again with the move: kept.
        let changes = s(&[("endpoint_url", "http://b"), ("access_key_id", "k2"), ("secret_access_key", "s2")]);
        let mut config = old.clone();
        config.extend(changes.clone());
        drop_stale_credentials(Cloud::Aws, &old, &changes, &mut config);
        assert_eq!(config["secret_access_key"], "s2");
        // Another setting changed: credentials stay.
        let changes = s(&[("region", "eu-west-1")]);
        let mut config = old.clone();
        config.extend(changes.clone());
        drop_stale_credentials(Cloud::Aws, &old, &changes, &mut config);
        assert_eq!(config["secret_access_key"], "s");
    }
}
