//! Access tokens: JWTs (RFC 7519) signed with HS256 under the cluster's
//! auth secret, as Nacos issues them (`sub` = user, `exp` = seconds since
//! the epoch), so that any node with the same secret accepts a token
//! another node issued, before and after a restart. Pure: the time is a
//! parameter.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A token longer than this is refused unread (a Nacos token is ~150).
pub const TOKEN_BYTES_MAX: usize = 2048;
/// The shortest secret accepted, in decoded bytes (HS256's key size).
pub const SECRET_BYTES_MIN: usize = 32;

/// The header every token carries: `{"alg":"HS256"}`, as jjwt writes it.
const HEADER_JSON: &str = r#"{"alg":"HS256"}"#;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token invalid!")]
    Malformed,
    #[error("token invalid!")]
    BadSignature,
    #[error("token expired!")]
    Expired,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Signs and checks tokens with one secret. Cloning is cheap: the keyed
/// HMAC state is computed once.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Why a secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("--auth-secret is not Base64 ({0})")]
    NotBase64(String),
    #[error(
        "--auth-secret decodes to {0} bytes; give at least {SECRET_BYTES_MIN} (for example \
         `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort(usize),
}

impl Signer {
    /// A signer for a Base64 secret (standard alphabet, as Nacos's
    /// `nacos.core.auth.plugin.nacos.token.secret.key`).
    pub fn from_base64(secret: &str) -> Result<Signer, SecretError> {
        let key = STANDARD
            .decode(secret.trim())
            .map_err(|e| SecretError::NotBase64(e.to_string()))?;
        if key.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Signer::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Signer {
        Signer {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// The HMAC of `data` under the secret.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// A token for `user` valid until `exp` (seconds).
    pub fn issue(&self, user: &str, exp: u64) -> String {
        let claims = serde_json::json!({ "sub": user, "exp": exp });
        let mut t = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.mac(&[t.as_bytes()]);
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    /// Checks a token's form, signature and expiry at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        let mut m = self.mac.clone();
        m.update(signed.as_bytes());
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        // Signed by us, so the rest is ours; still checked, never trusted
        // to be well formed (an older release, another Nacos).
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        #[derive(serde::Deserialize)]
        struct Body {
            sub: String,
            exp: u64,
        }
        let body: Body = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if body.exp <= now_s {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            sub: body.sub,
            exp: body.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_key(&[7u8; 32])
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let s = signer();
        let t = s.issue("nacos", 1_000);
        let c = s.verify(&t, 999).unwrap();
        assert_eq!(
            c,
            Claims {
                sub: "nacos".into(),
                exp: 1_000
            }
        );
        assert_eq!(s.verify(&t, 1_000), Err(TokenError::Expired));
        // The header is jjwt's, so a Nacos server with this secret reads it.
        let h = t.split('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(h).unwrap(), HEADER_JSON.as_bytes());
    }

    #[test]
    fn another_secret_or_a_changed_byte_is_refused() {
        let t = signer().issue("nacos", 1_000);
        let other = Signer::from_key(&[8u8; 32]);
        assert_eq!(other.verify(&t, 1), Err(TokenError::BadSignature));
        // The payload changed to another user, signature kept.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","exp":1000}"#);
        assert_eq!(
            signer().verify(&parts.join("."), 1),
            Err(TokenError::BadSignature)
        );
        // alg none, unsigned.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"nacos","exp":1000}"#)
        );
        assert!(signer().verify(&none, 1).is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        let s = signer();
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "!!.??.##",
            &"a".repeat(5000),
        ] {
            assert!(s.verify(t, 1).is_err(), "{t:?}");
        }
    }

    #[test]
    fn secrets_are_base64_of_at_least_32_bytes() {
        assert!(Signer::from_base64(&STANDARD.encode([1u8; 32])).is_ok());
        assert_eq!(
            Signer::from_base64(&STANDARD.encode([1u8; 31])).unwrap_err(),
            SecretError::TooShort(31)
        );
        assert!(matches!(
            Signer::from_base64("not base64!"),
            Err(SecretError::NotBase64(_))
        ));
    }
}
