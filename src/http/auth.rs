//! The cluster's shared secret on the wire: `Authorization: Bearer
//! <token>` on every request (`http.token`). The server compares in
//! constant time, so the time of a refusal says nothing about how much of
//! a guess was right.

/// The header value a client sends for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether `request` may be served: always when no token is configured,
/// otherwise only with the exact `Authorization: Bearer <token>` header.
pub(super) fn authorized(request: &super::server::Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let want = bearer(token);
    request
        .headers("authorization")
        .any(|value| constant_time_eq(value.as_bytes(), want.as_bytes()))
}

/// Compares without stopping at the first difference (the length is not
/// secret: every token is compared against the same configured one).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(constant_time_eq(b"Bearer s3cret", b"Bearer s3cret"));
        assert!(!constant_time_eq(b"Bearer s3creT", b"Bearer s3cret"));
        assert!(!constant_time_eq(b"Bearer s3cre", b"Bearer s3cret"));
        assert!(!constant_time_eq(b"", b"Bearer s3cret"));
    }
}
