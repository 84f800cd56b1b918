//! context/tokens — signed tenant tokens: `nile.set_tenant_token()` enters the tenant a token names,
//! `nile.sign_tenant_token()` mints one, `nile.current_user_id()` returns the user id a token carried.
//!
//! A token is a JSON Web Token signed with HMAC-SHA256 (`alg` HS256) under the key in `nile.token_key` (or, during a
//! key changeover, `nile.token_key_previous`): `base64url(header) . base64url(payload) . base64url(signature)`, where
//! the signature is HMAC-SHA256(key, "<header>.<payload>"). The header is `{"alg":"HS256","typ":"JWT","kid":"<key
//! id>"}`; `kid`, the first 16 hex digits of SHA-256(key), tells "signed with a key this server does not have" apart
//! from "altered". The payload carries `tid` (the tenant's uuid), `exp` (expiry, Unix seconds), optionally `sub` (a
//! user id) and `iat`/`nbf`. The signature is checked before anything in the payload is looked at.

use super::guard;
use crate::context::tenant::{enter_read_only, enter_tenant};
use crate::context::tenant_cache::require_usable_tenant;
use crate::pg::errors::{raise, require_not_null, NileCode, Problem};
use crate::pg::privilege::require_role;
use crate::pg::uuid_text::{format_uuid, parse_canonical_uuid};
use crate::settings::{self, TOKEN_KEY_MIN_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Tokens longer than this are refused unread.
const MAX_TOKEN_LEN: usize = 4096;
/// The longest user id a token may carry, in bytes.
const MAX_USER_ID_LEN: usize = 256;

/// `nile.set_tenant_token(token text, is_local boolean DEFAULT true) RETURNS uuid`
#[pg_extern(volatile, parallel_unsafe)]
fn set_tenant_token(token: Option<&str>, is_local: default!(Option<bool>, true)) -> Uuid {
    let token = require_not_null(token, "token");
    let is_local = require_not_null(is_local, "is_local");
    let claims = verify(token, now_unix());
    enter_tenant(claims.tenant, claims.user.as_deref(), is_local, true);
    Uuid::from_bytes(claims.tenant)
}

/// `nile.set_tenant_token_read_only(token text) RETURNS uuid`: `nile.set_tenant_read_only()` for the tenant (and user)
/// a signed token names, after the checks of `nile.set_tenant_token()`.
#[pg_extern(volatile, parallel_unsafe)]
fn set_tenant_token_read_only(token: Option<&str>) -> Uuid {
    let token = require_not_null(token, "token");
    let claims = verify(token, now_unix());
    enter_read_only(claims.tenant, claims.user.as_deref(), true);
    Uuid::from_bytes(claims.tenant)
}

/// `nile.sign_tenant_token(tenant_id uuid, valid_for interval, user_id text DEFAULT NULL) RETURNS text`
#[pg_extern(volatile, parallel_unsafe)]
fn sign_tenant_token(
    tenant_id: Option<Uuid>,
    valid_for: Option<Interval>,
    user_id: default!(Option<&str>, "NULL"),
) -> String {
    require_role("nile_admin", "nile.sign_tenant_token()");
    let tenant = *require_not_null(tenant_id, "tenant_id").as_bytes();
    let valid_for = require_not_null(valid_for, "valid_for");
    let seconds = interval_seconds(&valid_for);
    if seconds < 1 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "valid_for must be at least one second",
            "Pass how long the token stays valid, e.g. interval '15 minutes'.",
        );
    }
    if let Some(user) = user_id {
        check_user_id(user);
    }
    require_usable_tenant(&tenant);
    let (key, _) = configured_keys();
    let now = now_unix();
    let mut payload =
        json!({"tid": format_uuid(&tenant), "iat": now, "exp": now.saturating_add(seconds)});
    if let Some(user) = user_id {
        payload["sub"] = Value::String(user.to_owned());
    }
    sign(&key, &payload)
}

/// `nile.current_user_id() RETURNS text`: the user id of the token the session entered its tenant with, or NULL.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<String> {
    guard::current_user_id()
}

/// What a verified token says.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Claims {
    pub tenant: [u8; 16],
    pub user: Option<String>,
}

/// `base64url(header).base64url(payload).base64url(HMAC-SHA256(key, header.payload))`.
pub(super) fn sign(key: &[u8], payload: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": key_id(key)});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(mac(key, signed.as_bytes()).finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// The key id of a key: the first 16 hex digits of its SHA-256.
pub(super) fn key_id(key: &[u8]) -> String {
    Sha256::digest(key)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mac(key: &[u8], message: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac
}

/// The configured keys (current, previous); 55000 when there is none, or the library was not preloaded.
fn configured_keys() -> (Vec<u8>, Vec<u8>) {
    if !settings::preloaded() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant tokens need nile_tenancy in shared_preload_libraries",
        )
        .detail("Without it, a session that has not loaded the library yet could read nile.token_key.")
        .hint("Add nile_tenancy to shared_preload_libraries in postgresql.conf and restart the server.")
        .raise();
    }
    let (current, previous) = settings::token_keys();
    if current.len() < TOKEN_KEY_MIN_LEN {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "nile.token_key is not set",
        )
        .hint("A superuser sets it: ALTER SYSTEM SET nile.token_key = '<random secret of 32 bytes or more>'; SELECT pg_reload_conf();")
        .raise();
    }
    (current, previous)
}

/// The tenant and user a token names, if its signature verifies under a configured key and it is valid at `now`;
/// otherwise a distinct error for each way it can fail.
fn verify(token: &str, now: i64) -> Claims {
    let (current, previous) = configured_keys();
    match check_token(token, &current, &previous, now) {
        Ok(claims) => claims,
        Err(refusal) => refusal.raise(),
    }
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Malformed(&'static str),
    UnknownKey(String),
    Altered,
    NoKeyMatches,
    Expired(i64),
    NotYetValid(i64),
}

impl Refusal {
    fn raise(self) -> ! {
        let rotate = "Tokens are verified with nile.token_key and, during a key changeover, nile.token_key_previous.";
        match self {
            Refusal::Malformed(what) => Problem::nile(
                NileCode::InvalidToken,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("tenant token is malformed: {what}"),
            )
            .hint("A tenant token is a JWT signed with HS256 whose payload carries tid (tenant uuid) and exp (Unix seconds); see docs/context.md.")
            .raise(),
            Refusal::UnknownKey(kid) => Problem::nile(
                NileCode::InvalidToken,
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("tenant token was signed with a key this server does not have (key id {kid})"),
            )
            .hint(rotate)
            .raise(),
            Refusal::Altered => Problem::nile(
                NileCode::InvalidToken,
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                "tenant token signature does not match: the token has been altered",
            )
            .hint("Use the token exactly as it was issued.")
            .raise(),
            Refusal::NoKeyMatches => Problem::nile(
                NileCode::InvalidToken,
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                "tenant token signature does not match any configured key: it was altered or signed with another key",
            )
            .hint(format!("{rotate} Include the key id (kid) in the token header to tell the two apart."))
            .raise(),
            Refusal::Expired(at) => Problem::nile(
                NileCode::TokenExpired,
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("tenant token expired at {} (Unix time {at})", unix_text(at)),
            )
            .hint("Ask the service that issued it for a new token.")
            .raise(),
            Refusal::NotYetValid(at) => Problem::nile(
                NileCode::InvalidToken,
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("tenant token is not valid before {} (Unix time {at})", unix_text(at)),
            )
            .hint("Check the clock of the service that issued it.")
            .raise(),
        }
    }
}

/// Verify a token (pure: no Postgres calls, so the unit tests exercise it directly).
pub(super) fn check_token(
    token: &str,
    current: &[u8],
    previous: &[u8],
    now: i64,
) -> Result<Claims, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::Malformed("it is longer than 4096 bytes"));
    }
    let mut parts = token.trim().split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed(
            "it must have three parts separated by dots",
        ));
    };
    let header = decode_object(
        header_b64,
        "its header is not a base64url-encoded JSON object",
    )?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(Refusal::Malformed("its header must say \"alg\": \"HS256\""));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Refusal::Malformed("its signature is not base64url"))?;
    let signed = &token.trim()[..header_b64.len() + 1 + payload_b64.len()];
    let verifies = |key: &[u8]| {
        !key.is_empty() && mac(key, signed.as_bytes()).verify_slice(&signature).is_ok()
    };
    match header.get("kid") {
        Some(Value::String(kid)) => {
            let key = [current, previous]
                .into_iter()
                .find(|key| !key.is_empty() && key_id(key) == *kid)
                .ok_or_else(|| Refusal::UnknownKey(kid.chars().take(32).collect()))?;
            if !verifies(key) {
                return Err(Refusal::Altered);
            }
        }
        Some(_) => return Err(Refusal::Malformed("its header's kid must be a string")),
        None => {
            if !verifies(current) && !verifies(previous) {
                return Err(Refusal::NoKeyMatches);
            }
        }
    }
    // Signed by us: now the payload may be read.
    let payload = decode_object(
        payload_b64,
        "its payload is not a base64url-encoded JSON object",
    )?;
    let tenant = payload
        .get("tid")
        .and_then(Value::as_str)
        .and_then(|t| parse_canonical_uuid(t.as_bytes()))
        .ok_or(Refusal::Malformed(
            "its payload must carry tid, the tenant's uuid",
        ))?;
    let exp = numeric_date(&payload, "exp")?.ok_or(Refusal::Malformed(
        "its payload must carry exp, the expiry in Unix seconds",
    ))?;
    if now >= exp {
        return Err(Refusal::Expired(exp));
    }
    if let Some(nbf) = numeric_date(&payload, "nbf")? {
        if now < nbf {
            return Err(Refusal::NotYetValid(nbf));
        }
    }
    let user = match payload.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s))
            if s.len() <= MAX_USER_ID_LEN && !s.is_empty() && !s.contains('\0') =>
        {
            Some(s.clone())
        }
        Some(_) => {
            return Err(Refusal::Malformed(
                "its sub must be a non-empty string of at most 256 bytes",
            ))
        }
    };
    Ok(Claims { tenant, user })
}

/// A base64url-encoded JSON object, or `Malformed(malformed)`.
fn decode_object(part: &str, malformed: &'static str) -> Result<Map<String, Value>, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Refusal::Malformed(malformed))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::Malformed(malformed)),
    }
}

/// A JWT NumericDate claim: whole Unix seconds (a fraction is cut off, as RFC 7519 allows).
fn numeric_date(payload: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, Refusal> {
    match payload.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or(Refusal::Malformed("its exp and nbf must be Unix seconds")),
        Some(_) => Err(Refusal::Malformed("its exp and nbf must be Unix seconds")),
    }
}

fn check_user_id(user: &str) {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "user_id must be between 1 and 256 bytes long",
            "Pass NULL for a token without a user id.",
        );
    }
}

/// Seconds in an interval, counted the way `extract(epoch FROM interval)` does (a month is 30.4375 days).
fn interval_seconds(interval: &Interval) -> i64 {
    let months = interval.months() as f64 * 30.4375 * 86_400.0;
    let days = interval.days() as f64 * 86_400.0;
    let micros = interval.micros() as f64 / 1_000_000.0;
    let total = months + days + micros;
    if total >= i64::MAX as f64 {
        i64::MAX
    } else {
        total as i64
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as an ISO 8601 UTC timestamp.
fn unix_text(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+00",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-current";
    const OLD: &[u8] = b"0123456789abcdef0123456789abcdef-previous";
    const TENANT: &str = "0a0a0a0a-0000-7000-8000-000000000001";

    fn token(key: &[u8], payload: Value) -> String {
        sign(key, &payload)
    }

    fn valid(exp: i64) -> Value {
        json!({"tid": TENANT, "exp": exp, "sub": "user-7"})
    }

    #[test]
    fn tokens_verify_and_every_failure_is_distinct() {
        let now = 1_800_000_000;
        let good = token(KEY, valid(now + 60));
        let claims = check_token(&good, KEY, b"", now).unwrap();
        assert_eq!(claims.user.as_deref(), Some("user-7"));
        assert_eq!(format_uuid(&claims.tenant), TENANT);
        // Key changeover: a token signed with the previous key passes while it is configured, and only then.
        let old = token(OLD, valid(now + 60));
        assert!(check_token(&old, KEY, OLD, now).is_ok());
        assert!(matches!(
            check_token(&old, KEY, b"", now),
            Err(Refusal::UnknownKey(_))
        ));
        // Altered payload, same signature.
        let parts: Vec<&str> = good.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(
            json!({"tid": "0b0b0b0b-0000-7000-8000-000000000002", "exp": now + 60}).to_string(),
        );
        let altered = format!("{}.{}.{}", parts[0], other, parts[2]);
        assert_eq!(check_token(&altered, KEY, b"", now), Err(Refusal::Altered));
        // Without kid: altered or foreign key cannot be told apart.
        let no_kid_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let body = format!("{no_kid_header}.{}", parts[1]);
        let sig = URL_SAFE_NO_PAD.encode(mac(KEY, body.as_bytes()).finalize().into_bytes());
        assert!(check_token(&format!("{body}.{sig}"), KEY, b"", now).is_ok());
        assert_eq!(
            check_token(&format!("{body}.{sig}"), OLD, b"", now),
            Err(Refusal::NoKeyMatches)
        );
        // Expired, not yet valid.
        assert_eq!(
            check_token(&token(KEY, valid(now)), KEY, b"", now),
            Err(Refusal::Expired(now))
        );
        let early = token(
            KEY,
            json!({"tid": TENANT, "exp": now + 60, "nbf": now + 30}),
        );
        assert_eq!(
            check_token(&early, KEY, b"", now),
            Err(Refusal::NotYetValid(now + 30))
        );
        // Malformed in every part.
        for bad in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{}.{}.!!", parts[0], parts[1]),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                parts[1],
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("[1]"),
                parts[1],
                parts[2]
            ),
            token(KEY, json!({"exp": now + 60})),
            token(KEY, json!({"tid": "not-a-uuid", "exp": now + 60})),
            token(KEY, json!({"tid": TENANT})),
            token(KEY, json!({"tid": TENANT, "exp": "tomorrow"})),
            token(KEY, json!({"tid": TENANT, "exp": now + 60, "sub": 7})),
            "x".repeat(5000),
        ] {
            assert!(
                matches!(check_token(&bad, KEY, b"", now), Err(Refusal::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn unix_text_is_utc() {
        assert_eq!(unix_text(0), "1970-01-01 00:00:00+00");
        assert_eq!(unix_text(1_800_000_000), "2027-01-15 08:00:00+00");
    }
}
