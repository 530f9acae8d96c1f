//! JWT verification: the accepted algorithms pass, and one test per bypass class fails
//! with the right reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice_proxy::auth::AuthError;
use sluice_proxy::auth::jwks::KeySet;
use sluice_proxy::auth::jwt::{HmacConfig, JwtConfig, JwtError, JwtIdentity, JwtVerifier};

const JWKS: &[u8] = include_bytes!("fixtures/jwt/jwks.json");
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/jwt/rsa-public.pem");
const RSA_OTHER: &[u8] = include_bytes!("fixtures/jwt/rsa-other-private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/ec-private.pem");
const ED_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/ed25519-private.pem");

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.example";
const HMAC_SECRET: &[u8] = b"a-shared-secret-of-at-least-32-bytes!";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn keys() -> KeySet {
    KeySet::from_json(JWKS).expect("fixture key set")
}

fn config() -> JwtConfig {
    JwtConfig {
        issuers: vec![ISSUER.into()],
        audiences: vec!["sluice".into(), "other".into()],
        leeway: Duration::from_secs(10),
        ..JwtConfig::default()
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(config()).expect("config")
}

fn claims() -> Value {
    json!({
        "sub": "alice",
        "tier": "premium",
        "iss": ISSUER,
        "aud": "sluice",
        "exp": NOW + 600,
        "nbf": NOW - 10,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa key")
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), &rsa(), claims)
}

/// A token with a hand-written header and no real signature.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn alice(tier: &str) -> JwtIdentity {
    JwtIdentity {
        consumer: "alice".into(),
        tier: tier.into(),
    }
}

#[test]
fn key_set_takes_the_algorithm_from_each_key() {
    let set = keys();
    assert_eq!(set.len(), 3);
    let algs: Vec<_> = set
        .keys()
        .iter()
        .map(|k| (k.kid(), k.algorithm()))
        .collect();
    assert_eq!(
        algs,
        vec![
            (Some("rsa-1"), Algorithm::RS256),
            (Some("ec-1"), Algorithm::ES256),
            (Some("ed-1"), Algorithm::EdDSA),
        ]
    );
}

#[test]
fn valid_rs256_es256_and_eddsa_tokens_pass() {
    let v = verifier();
    let set = keys();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec key");
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed key");
    for token in [
        rs256(&claims()),
        sign(Algorithm::ES256, Some("ec-1"), &ec, &claims()),
        sign(Algorithm::EdDSA, Some("ed-1"), &ed, &claims()),
    ] {
        assert_eq!(v.verify(&token, &set, now()), Ok(alice("premium")));
    }
}

#[test]
fn alg_none_is_refused() {
    let v = verifier();
    for alg in ["none", "None", "NONE"] {
        let token = unsigned(&json!({"alg": alg, "kid": "rsa-1"}), &claims(), "");
        assert_eq!(
            v.verify(&token, &keys(), now()),
            Err(AuthError::UnsupportedAlgorithm),
            "{alg}"
        );
    }
    // Without the empty signature part: not even well-formed.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    assert_eq!(
        v.verify(&format!("{header}.{payload}"), &keys(), now()),
        Err(AuthError::Malformed)
    );
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // The RS/HS confusion: an attacker uses the published public key as HMAC secret.
    let pem = EncodingKey::from_secret(RSA_PUBLIC);
    let body: String = String::from_utf8_lossy(RSA_PUBLIC)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = EncodingKey::from_secret(&STANDARD.decode(body).expect("pem body"));
    let set = keys();
    for key in [&pem, &der] {
        // Naming the RSA key: its algorithm is RS256, not HS256.
        let token = sign(Algorithm::HS256, Some("rsa-1"), key, &claims());
        assert_eq!(
            verifier().verify(&token, &set, now()),
            Err(AuthError::AlgorithmMismatch)
        );
        // Without kid and no HMAC secret configured: no HMAC key exists at all.
        let token = sign(Algorithm::HS256, None, key, &claims());
        assert_eq!(
            verifier().verify(&token, &set, now()),
            Err(AuthError::UnknownKid)
        );
        let single = KeySet::from_json(
            json!({"keys": [serde_json::from_slice::<Value>(JWKS).expect("json")["keys"][0]]})
                .to_string()
                .as_bytes(),
        )
        .expect("single key");
        assert_eq!(
            verifier().verify(&token, &single, now()),
            Err(AuthError::AlgorithmMismatch)
        );
        // With an HMAC secret configured, the public key is still not that secret.
        let with_hmac = JwtVerifier::new(JwtConfig {
            hmac: Some(HmacConfig::new(HMAC_SECRET)),
            ..config()
        })
        .expect("config");
        assert_eq!(
            with_hmac.verify(&token, &KeySet::empty(), now()),
            Err(AuthError::BadSignature)
        );
    }
}

#[test]
fn hs256_needs_an_explicit_secret() {
    let key = EncodingKey::from_secret(HMAC_SECRET);
    let token = sign(Algorithm::HS256, None, &key, &claims());
    assert_eq!(
        verifier().verify(&token, &KeySet::empty(), now()),
        Err(AuthError::UnknownKid)
    );
    let v = JwtVerifier::new(JwtConfig {
        hmac: Some(HmacConfig::new(HMAC_SECRET)),
        ..config()
    })
    .expect("config");
    assert_eq!(
        v.verify(&token, &KeySet::empty(), now()),
        Ok(alice("premium"))
    );
    // HS384 against an HS256 secret: the key decides.
    let token = sign(Algorithm::HS384, None, &key, &claims());
    assert_eq!(
        v.verify(&token, &KeySet::empty(), now()),
        Err(AuthError::AlgorithmMismatch)
    );
    // Next to a key set, the secret is found by its kid.
    let v = JwtVerifier::new(JwtConfig {
        hmac: Some(HmacConfig {
            kid: Some("hs-1".into()),
            ..HmacConfig::new(HMAC_SECRET)
        }),
        ..config()
    })
    .expect("config");
    let token = sign(Algorithm::HS256, Some("hs-1"), &key, &claims());
    assert_eq!(v.verify(&token, &keys(), now()), Ok(alice("premium")));
}

#[test]
fn hmac_secrets_that_cannot_be_right_are_refused() {
    for (hmac, err) in [
        (
            HmacConfig::new(&b"short"[..]),
            JwtError::HmacSecretTooShort { len: 5 },
        ),
        (HmacConfig::new(RSA_PUBLIC), JwtError::HmacSecretIsPem),
        (
            HmacConfig {
                algorithm: Algorithm::RS256,
                ..HmacConfig::new(HMAC_SECRET)
            },
            JwtError::NotHmacAlgorithm,
        ),
    ] {
        let cfg = JwtConfig {
            hmac: Some(hmac),
            ..config()
        };
        assert_eq!(JwtVerifier::new(cfg).map(|_| ()), Err(err));
    }
    let long = JwtConfig {
        leeway: Duration::from_secs(3600),
        ..config()
    };
    assert!(matches!(
        JwtVerifier::new(long),
        Err(JwtError::LeewayTooLarge { secs: 3600 })
    ));
}

#[test]
fn header_alg_differing_from_the_key_is_refused() {
    // An RSA-PSS signature with the right key, but the key is RS256.
    let token = sign(Algorithm::PS256, Some("rsa-1"), &rsa(), &claims());
    assert_eq!(
        verifier().verify(&token, &keys(), now()),
        Err(AuthError::AlgorithmMismatch)
    );
    // An ES256 header naming the Ed25519 key.
    let token = unsigned(&json!({"alg": "ES256", "kid": "ed-1"}), &claims(), "AAAA");
    assert_eq!(
        verifier().verify(&token, &keys(), now()),
        Err(AuthError::AlgorithmMismatch)
    );
    let token = unsigned(&json!({"alg": "XS999", "kid": "rsa-1"}), &claims(), "AAAA");
    assert_eq!(
        verifier().verify(&token, &keys(), now()),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn expiry_and_not_before_honour_the_leeway() {
    let v = verifier();
    let at = |exp: u64, nbf: u64| {
        let mut c = claims();
        c["exp"] = json!(exp);
        c["nbf"] = json!(nbf);
        v.verify(&rs256(&c), &keys(), now())
    };
    assert_eq!(at(NOW - 11, NOW - 100), Err(AuthError::Expired));
    assert_eq!(at(NOW - 10, NOW - 100), Err(AuthError::Expired));
    assert_eq!(at(NOW - 9, NOW - 100), Ok(alice("premium")));
    assert_eq!(at(NOW + 100, NOW + 11), Err(AuthError::NotYetValid));
    assert_eq!(at(NOW + 100, NOW + 10), Ok(alice("premium")));
    let mut c = claims();
    c.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()),
        Err(AuthError::MissingClaim)
    );
    c["exp"] = json!("tomorrow");
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()),
        Err(AuthError::InvalidClaim)
    );
    c["exp"] = json!((NOW + 5) as f64 + 0.5);
    assert_eq!(v.verify(&rs256(&c), &keys(), now()), Ok(alice("premium")));
}

#[test]
fn issuer_and_audience_must_be_configured_ones() {
    let v = verifier();
    let with = |field: &str, value: Value| {
        let mut c = claims();
        c[field] = value;
        v.verify(&rs256(&c), &keys(), now())
    };
    assert_eq!(
        with("iss", json!("https://evil.example")),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        with("aud", json!("someone-else")),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        with("aud", json!(["x", "y"])),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(with("aud", json!(42)), Err(AuthError::WrongAudience));
    assert_eq!(with("aud", json!(["x", "other"])), Ok(alice("premium")));
    let mut c = claims();
    c.as_object_mut().expect("object").remove("aud");
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()),
        Err(AuthError::WrongAudience)
    );
}

#[test]
fn unknown_kid_and_foreign_signatures() {
    let v = verifier();
    let token = sign(Algorithm::RS256, Some("rsa-2"), &rsa(), &claims());
    assert_eq!(v.verify(&token, &keys(), now()), Err(AuthError::UnknownKid));
    // A key the set does not hold, claiming the kid of one it does.
    let other = EncodingKey::from_rsa_pem(RSA_OTHER).expect("other key");
    let token = sign(Algorithm::RS256, Some("rsa-1"), &other, &claims());
    assert_eq!(
        v.verify(&token, &keys(), now()),
        Err(AuthError::BadSignature)
    );
    // Claims swapped after signing.
    let good = rs256(&claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims();
    forged["tier"] = json!("root");
    let payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    parts[1] = &payload;
    assert_eq!(
        v.verify(&parts.join("."), &keys(), now()),
        Err(AuthError::BadSignature)
    );
    // No kid and three candidate keys.
    let token = sign(Algorithm::RS256, None, &rsa(), &claims());
    assert_eq!(v.verify(&token, &keys(), now()), Err(AuthError::UnknownKid));
}

#[test]
fn claims_map_to_consumer_and_tier() {
    let v = JwtVerifier::new(JwtConfig {
        consumer_claim: "client_id".into(),
        tier_claim: "plan".into(),
        default_tier: "free".into(),
        ..config()
    })
    .expect("config");
    let mut c = claims();
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()),
        Err(AuthError::MissingClaim)
    );
    c["client_id"] = json!("svc-7");
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()),
        Ok(JwtIdentity {
            consumer: "svc-7".into(),
            tier: "free".into()
        })
    );
    c["plan"] = json!("gold");
    assert_eq!(
        v.verify(&rs256(&c), &keys(), now()).map(|i| i.tier),
        Ok("gold".into())
    );
    for bad in [
        json!(""),
        json!("two words"),
        json!(7),
        json!("x".repeat(300)),
    ] {
        c["plan"] = bad;
        assert_eq!(
            v.verify(&rs256(&c), &keys(), now()),
            Err(AuthError::InvalidClaim)
        );
    }
}

#[test]
fn malformed_tokens() {
    let v = verifier();
    let good = rs256(&claims());
    let crit = unsigned(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"]}),
        &claims(),
        "AA",
    );
    for token in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("{good}.x"),
        format!("!{good}"),
        "e30.e30.".into(),
        crit,
        "x".repeat(10_000),
    ] {
        assert_eq!(
            v.verify(&token, &keys(), now()),
            Err(AuthError::Malformed),
            "{token}"
        );
    }
}
