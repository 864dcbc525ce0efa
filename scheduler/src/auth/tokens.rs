//! Service account tokens: JWTs (HS256 under a key derived from the cluster CA's, so every
//! replica signs and checks alike and nothing outside the control plane can forge one) with
//! Kubernetes' claims — `iss`, `sub` (`system:serviceaccount:NS:NAME`), `aud`, `exp`, `iat`,
//! `nbf`, `jti` and `kubernetes.io` (namespace, service account name and uid, the pod a token
//! is bound to). A token authenticates while it has not expired, names one of the API's
//! audiences, its service account still exists with the same uid and, when bound, its pod
//! does too (same uid, not past its deletion): a bound token dies with its pod.

use super::User;
use crate::store::Store;
use base64::Engine;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The issuer, and the audience tokens get when they ask for none.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs and checks tokens.
pub struct Signer {
    key: aws_lc_rs::hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer { key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret) }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let head = B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "tug"}).to_string());
        let body = B64.encode(claims.to_string());
        let signed = format!("{head}.{body}");
        let tag = aws_lc_rs::hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// The claims of a token this signer made (signature checked, nothing else).
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let header: Value = B64
            .decode(head)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("a malformed token header")?;
        if header["alg"] != "HS256" {
            return Err("not signed by this cluster".into());
        }
        let sig = B64.decode(sig).map_err(|_| "a malformed signature")?;
        aws_lc_rs::hmac::verify(&self.key, format!("{head}.{body}").as_bytes(), &sig)
            .map_err(|_| "not signed by this cluster")?;
        B64.decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "malformed claims".into())
    }
}

/// What a token is for.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub service_account_uid: &'a str,
    /// (name, uid) of the pod it is bound to.
    pub pod: Option<(&'a str, &'a str)>,
    pub audiences: Vec<String>,
    pub expiration_seconds: u64,
    pub now: u64,
}

/// A token's claims.
pub fn claims(r: &Request) -> Value {
    let mut k8s = json!({
        "namespace": r.namespace,
        "serviceaccount": {"name": r.service_account, "uid": r.service_account_uid},
    });
    if let Some((name, uid)) = r.pod {
        k8s["pod"] = json!({"name": name, "uid": uid});
    }
    json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{}:{}", r.namespace, r.service_account),
        "aud": r.audiences,
        "iat": r.now, "nbf": r.now, "exp": r.now + r.expiration_seconds,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
    })
}

/// The user a token authenticates, or why it does not.
pub fn authenticate(
    store: &dyn Store,
    signer: &Signer,
    token: &str,
    audiences: &[String],
    now: u64,
) -> Result<User, String> {
    let c = signer.verify(token)?;
    let exp = c["exp"].as_u64().ok_or("no expiry")?;
    if now >= exp {
        return Err("the token has expired".into());
    }
    if c["nbf"].as_u64().is_some_and(|nbf| now + 60 < nbf) {
        return Err("the token is not valid yet".into());
    }
    let aud: Vec<&str> = c["aud"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !aud.iter().any(|a| audiences.iter().any(|x| x == a)) {
        return Err("the token is not for this API (audience)".into());
    }
    let k = &c["kubernetes.io"];
    let ns = k["namespace"].as_str().ok_or("no namespace")?;
    let sa = k["serviceaccount"]["name"].as_str().ok_or("no service account")?;
    let sa_uid = k["serviceaccount"]["uid"].as_str().unwrap_or_default();
    let found = store.get(&format!("/serviceaccounts/{ns}/{sa}")).map_err(|e| e.to_string())?;
    if !found.is_some_and(|s| s.object["metadata"]["uid"] == sa_uid) {
        return Err(format!("service account {ns}/{sa} has been deleted"));
    }
    if let Some(pod) = k["pod"].as_object() {
        let name = pod.get("name").and_then(Value::as_str).unwrap_or_default();
        let uid = pod.get("uid").and_then(Value::as_str).unwrap_or_default();
        let p = store.get(&format!("/pods/{ns}/{name}")).map_err(|e| e.to_string())?;
        let Some(p) = p.filter(|p| p.object["metadata"]["uid"] == uid) else {
            return Err(format!("pod {ns}/{name} the token is bound to has been deleted"));
        };
        let gone = p.object["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(crate::controllers::parse_time)
            .is_some_and(|t| t <= now);
        if gone {
            return Err(format!("pod {ns}/{name} the token is bound to is deleted"));
        }
    }
    let mut user = User::new(
        format!("system:serviceaccount:{ns}:{sa}"),
        ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")],
    );
    user.uid = sa_uid.to_string();
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    #[test]
    fn a_bound_token_lives_while_its_pod_and_account_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        store.create("/serviceaccounts/a/bot", json!({"metadata": {"name": "bot", "uid": "sa-1"}})).unwrap();
        store.create("/pods/a/web", json!({"metadata": {"name": "web", "uid": "pod-1"}})).unwrap();
        let signer = Signer::new(b"k");
        let aud = vec![ISSUER.to_string()];
        let token = signer.sign(&claims(&Request {
            namespace: "a",
            service_account: "bot",
            service_account_uid: "sa-1",
            pod: Some(("web", "pod-1")),
            audiences: aud.clone(),
            expiration_seconds: 3600,
            now: 1000,
        }));
        let u = authenticate(&store, &signer, &token, &aud, 1001).unwrap();
        assert_eq!(u.name, "system:serviceaccount:a:bot");
        assert!(u.in_group("system:serviceaccounts:a") && u.in_group("system:authenticated"));
        assert!(authenticate(&store, &signer, &token, &aud, 4600).unwrap_err().contains("expired"));
        assert!(
            authenticate(&store, &signer, &token, &["other".into()], 1001).unwrap_err().contains("audience")
        );
        assert!(
            authenticate(&store, &Signer::new(b"other"), &token, &aud, 1001).is_err(),
            "another cluster's key"
        );
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(authenticate(&store, &signer, &forged, &aud, 1001).is_err());
        // The pod gone (or replaced by one of the same name): the token dies with it.
        store.delete("/pods/a/web", None).unwrap();
        assert!(authenticate(&store, &signer, &token, &aud, 1001).unwrap_err().contains("deleted"));
        store.create("/pods/a/web", json!({"metadata": {"name": "web", "uid": "pod-2"}})).unwrap();
        assert!(authenticate(&store, &signer, &token, &aud, 1001).is_err());
    }
}
