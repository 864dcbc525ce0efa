//! Authentication: the [`User`] behind a connection or a request.
//!
//! - A client certificate the cluster CA signed: user = its CN, groups = its O entries
//!   (Kubernetes' convention; `tug join` issues `system:node:NAME` in `system:nodes`).
//! - The Unix socket: the peer's credentials (`SO_PEERCRED`). uid 0 is `system:admin` in
//!   `system:masters`; any other uid is the user its passwd entry names (`uid:N` without
//!   one), with its groups — so the socket's group and mode plus RBAC bindings scope local
//!   access.
//! - The join token (`Authorization: Bearer`, on `POST /join`): `system:bootstrap` in
//!   `system:bootstrappers`.
//! - Nothing: `system:anonymous` in `system:unauthenticated`.
//!
//! Then `Impersonate-User`/`Impersonate-Group` headers swap the identity when the real user
//! may `impersonate` those users and groups (`kubectl --as`, `tug auth can-i --as`).

use super::{Attributes, User};
use axum::http::HeaderMap;

/// The identity a certificate the CA signed carries.
pub fn from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    (!cn.is_empty()).then(|| User::new(cn, groups))
}

/// The identity of a local process by its uid and gid.
pub fn from_unix(uid: u32, gid: u32) -> User {
    if uid == 0 {
        return User::admin();
    }
    let entry = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let Some(entry) = entry else {
        let mut u = User::new(format!("uid:{uid}"), [format!("gid:{gid}")]);
        u.uid = uid.to_string();
        return u;
    };
    let name = std::ffi::CString::new(entry.name.clone()).unwrap_or_default();
    let gids = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).unwrap_or_default();
    let groups = gids.into_iter().map(|g| {
        nix::unistd::Group::from_gid(g).ok().flatten().map_or_else(|| format!("gid:{g}"), |grp| grp.name)
    });
    let mut u = User::new(entry.name, groups);
    u.uid = uid.to_string();
    u
}

/// The bootstrap identity of a join-token holder.
pub fn bootstrapper() -> User {
    User::new("system:bootstrap", [super::BOOTSTRAPPERS.to_string()])
}

/// What an `Impersonate-*` header set asks for: the user and groups, and the checks the
/// real user must pass (one `impersonate` attribute each). `None` without the headers.
pub fn impersonation(headers: &HeaderMap) -> Result<Option<(User, Vec<Attributes>)>, String> {
    let values = |h: &str| -> Vec<String> {
        headers.get_all(h).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    if users.is_empty() {
        if !groups.is_empty() {
            return Err("requested impersonation of groups without a user (Impersonate-User)".into());
        }
        return Ok(None);
    }
    let name = users[0].clone();
    let mut checks = Vec::new();
    match name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => checks.push(Attributes::resource("impersonate", "", "serviceaccounts", ns, sa)),
        None => checks.push(Attributes::resource("impersonate", "", "users", "", &name)),
    }
    for g in &groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", g));
    }
    Ok(Some((User::new(name, groups), checks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::load_or_create(dir.path()).unwrap();
        let groups: Vec<String> =
            ["dev", "ops", "oncall", "system:masters"].iter().map(|g| g.to_string()).collect();
        let (cert, _) = pki.user_cert("alice", &groups, 3600).unwrap();
        let der = crate::pki::pem_to_der(&cert).unwrap();
        let u = from_certificate(&der).unwrap();
        assert_eq!(u.name, "alice");
        assert!(groups.iter().all(|g| u.in_group(g)) && u.in_group(super::super::AUTHENTICATED), "{u:?}");
        // The CA's signature checks, and the validity is the TTL's.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = crate::pki::pem_to_der(&pki.ca_pem).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let ca_key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            ca.public_key().subject_public_key.data.to_vec(),
        );
        ca_key
            .verify(parsed.tbs_certificate.as_ref(), &parsed.signature_value.data)
            .expect("signed by the CA");
        let life = parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert!((3600..=3660).contains(&life), "{life}");
        let (cert, _) = pki.client_cert("n1").unwrap();
        let u = from_certificate(&crate::pki::pem_to_der(&cert).unwrap()).unwrap();
        assert_eq!(u.node_name(), Some("n1"), "{u:?}");
    }

    #[test]
    fn root_is_admin_and_others_are_their_passwd_names() {
        assert_eq!(from_unix(0, 0), User::admin());
        let nobody = from_unix(65534, 65534);
        assert!(nobody.name == "nobody" || nobody.name == "uid:65534", "{nobody:?}");
        assert!(!nobody.in_group(super::super::MASTERS));
        assert_eq!(from_unix(4_000_123, 4_000_123).name, "uid:4000123");
    }

    #[test]
    fn impersonation_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(impersonation(&h), Ok(None));
        h.append("impersonate-user", "bob".parse().unwrap());
        h.append("impersonate-group", "dev".parse().unwrap());
        let (u, checks) = impersonation(&h).unwrap().unwrap();
        assert_eq!((u.name.as_str(), u.in_group("dev")), ("bob", true));
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].resource, "users");
    }
}
