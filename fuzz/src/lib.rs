//! A fixed test PKI for the e2e fuzz targets: one CA, a sender `web` and a
//! receiver `todos` with a fixed receive key, and one valid sealed delivery
//! that mutations start from. Built once per fuzzing process.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use exocom::e2e::{
    EpochConfig, Opener, OpenerConfig, ReceiveKey, Sealer, SigningIdentity, TrustAnchors,
    VerifiedAnnouncement, announce, verify_announcement,
};
use exocom::wire::{Deliver, Kind, RoutingHeader};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// The sender's SPIFFE id.
pub const WEB: &str = "spiffe://example.org/svc/web";
/// The receiver's SPIFFE id.
pub const TODOS: &str = "spiffe://example.org/svc/todos";

/// Everything the targets share.
pub struct Fixture {
    /// The pinned CA.
    pub anchors: TrustAnchors,
    /// The CA certificate, to pin it again in each fresh opener.
    pub ca_der: CertificateDer<'static>,
    /// "Now" inside every certificate's validity.
    pub now_ms: u64,
    /// The receiver's fixed key.
    pub todos_key: ReceiveKey,
    /// A valid delivery to `todos`, grant attached.
    pub deliver: Deliver,
    /// A valid announcement by `todos`.
    pub announcement: Bytes,
    /// An opener that already knows the valid delivery's epoch, so
    /// mutations reach the tag, replay and AEAD checks without a grant.
    pub warm: Mutex<Opener>,
}

fn web_may_send(sender: &str, _name: &str) -> bool {
    sender == "web"
}

impl Fixture {
    /// A fresh opener for `todos` (no epoch known yet).
    pub fn cold_opener(&self) -> Opener {
        let anchors = TrustAnchors::from_der(std::slice::from_ref(&self.ca_der)).unwrap();
        Opener::new(self.todos_key.clone(), TODOS, anchors, web_may_send, OpenerConfig::default())
    }
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, service: &str) -> SigningIdentity {
    let mut params = CertificateParams::default();
    let uri = format!("spiffe://example.org/svc/{service}");
    params.distinguished_name.push(DnType::CommonName, service);
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    SigningIdentity::from_der(vec![CertificateDer::from(cert.der().to_vec())], &key.serialize_der()).unwrap()
}

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "fuzz ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let anchors = TrustAnchors::from_der(&[issuer.der().clone()]).unwrap();
        let now_ms = (OffsetDateTime::now_utc().unix_timestamp() as u64) * 1000;

        let todos_key = ReceiveKey::from_secret([7; 32]);
        let todos = leaf(&issuer, "todos");
        let announcement = announce(&todos, &todos_key, "r-1", now_ms, Duration::from_secs(3600)).unwrap();
        let receiver: VerifiedAnnouncement = verify_announcement(&announcement, &anchors, now_ms).unwrap();

        let mut sealer = Sealer::new(leaf(&issuer, "web"), "s-1", EpochConfig::default());
        let header = RoutingHeader {
            name: "todos.create".into(),
            version: 1,
            id: Bytes::from_static(&[1; 16]),
            origin_id: Bytes::from_static(&[2; 16]),
            kind: Kind::Command as i32,
            expects_reply: true,
            ..Default::default()
        };
        let sealed = sealer.seal(header, &[receiver], 1, b"buy milk", now_ms).unwrap();
        let pick = |blobs: &[exocom::wire::ServiceBlob]| {
            blobs.iter().find(|b| b.service == "todos").map(|b| b.data.clone()).unwrap_or_default()
        };
        let deliver = Deliver {
            tag: 1,
            header: sealed.header.clone(),
            payload: sealed.payload.clone(),
            sender: "web".into(),
            sender_id: WEB.into(),
            timestamp_ms: now_ms,
            attempt: 1,
            auth_tag: pick(&sealed.tags),
            grant: pick(&sealed.grants),
        };
        let fixture = Fixture {
            anchors,
            ca_der: issuer.der().clone(),
            now_ms,
            todos_key,
            deliver: deliver.clone(),
            announcement,
            warm: Mutex::new(Opener::new(
                ReceiveKey::from_secret([7; 32]),
                TODOS,
                TrustAnchors::from_der(&[issuer.der().clone()]).unwrap(),
                web_may_send,
                OpenerConfig::default(),
            )),
        };
        let opened = fixture.warm.lock().unwrap().open(&deliver, now_ms).unwrap();
        assert_eq!(&opened.plaintext[..], b"buy milk");
        fixture
    })
}

/// Applies edits `(field, offset, xor)` from `edits` to a copy of `bytes`:
/// three bytes per edit (u16 offset, xor); an offset past the end appends, `xor == 0` truncates.
pub fn mutate(bytes: &[u8], edits: &[u8]) -> Bytes {
    let mut out = bytes.to_vec();
    for e in edits.chunks_exact(3) {
        let (at, x) = (usize::from(u16::from_be_bytes([e[0], e[1]])), e[2]);
        if out.is_empty() || at >= out.len() {
            out.push(x);
        } else if x == 0 {
            out.truncate(at);
        } else {
            out[at] ^= x;
        }
    }
    Bytes::from(out)
}
