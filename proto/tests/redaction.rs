//! Messages that carry secret material never print it.

use keybridge_proto::v1 as pb;

#[test]
fn debug_output_holds_no_secret_material() {
    let value = pb::SecretValue {
        kind: Some(pb::secret_value::Kind::Fields(pb::Fields {
            fields: [("password".into(), "hunter2-xyz".into())].into(),
        })),
    };
    let shown = [
        format!("{:?}", pb::PutRequest { path: "secret/a".into(), value: Some(value.clone()), cas: None }),
        format!("{:?}", pb::GetResponse { value: Some(value), ..Default::default() }),
        format!("{:?}", pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(b"hunter2-xyz".to_vec())) }),
        format!(
            "{:?}",
            pb::InitResponse {
                unseal_keys_b64: vec!["hunter2-xyz".into()],
                unseal_threshold: 1,
                root_token: "hunter2-xyz".into(),
                recovery_keys_b64: vec!["hunter2-xyz".into()],
                recovery_threshold: 1,
            }
        ),
        format!("{:?}", pb::UnsealRequest { key: "hunter2-xyz".into(), reset: false, migrate: false }),
        format!("{:?}", pb::RekeyRequest { keys: vec!["hunter2-xyz".into()], key_shares: 1, key_threshold: 1 }),
        format!(
            "{:?}",
            pb::RekeyResponse { unseal_keys_b64: vec!["hunter2-xyz".into()], unseal_threshold: 1, recovery: true }
        ),
        format!("{:?}", pb::SnapshotChunk { data: b"hunter2-xyz".to_vec(), force: false }),
        format!(
            "{:?}",
            pb::LogicalRequest { path: "p/x".into(), data: [("password".into(), "hunter2-xyz".into())].into() }
        ),
        format!(
            "{:?}",
            pb::LogicalResponse { data: [("token".into(), "hunter2-xyz".into())].into(), ..Default::default() }
        ),
        format!("{:?}", pb::RegisterPluginChunk { data: b"hunter2-xyz".to_vec(), ..Default::default() }),
        format!("{:?}", pb::AuditHashRequest { path: "file/".into(), input: b"hunter2-xyz".to_vec() }),
        format!("{:?}", pb::AuditVerificationKey { key: "hunter2-xyz".into(), ..Default::default() }),
        format!("{:?}", pb::LoginRequest { jwt: "hunter2-xyz".into(), ..Default::default() }),
        format!("{:?}", pb::LoginResponse { token: "hunter2-xyz".into(), info: None }),
        format!(
            "{:?}",
            pb::WriteAuthConfigRequest {
                path: "k/".into(),
                settings: [("token_reviewer_jwt".into(), "hunter2-xyz".into())].into()
            }
        ),
    ];
    for s in shown {
        assert!(!s.contains("hunter2"), "{s}");
        assert!(!s.contains("104, 117"), "bytes leak as numbers: {s}");
    }
}
