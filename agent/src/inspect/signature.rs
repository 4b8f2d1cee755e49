//! Requests whose body a client signature covers. Redacting such a body
//! breaks the signature: the upstream refuses the request (AWS answers 403),
//! so the proxy would forward something neither side wanted. The policy
//! refuses such a request instead of rewriting it.

use http::{HeaderMap, header::AUTHORIZATION};

/// The signing scheme when a signature covers the body, as a name for
/// messages and records.
pub fn body_signature(headers: &HeaderMap, query: Option<&str>) -> Option<&'static str> {
    // SigV4 hashes the payload into the canonical request unless the client
    // declares it unsigned; the chunked STREAMING-* forms sign every chunk.
    let payload = headers
        .get("x-amz-content-sha256")
        .map(|v| v.as_bytes().trim_ascii());
    let unsigned = payload.is_some_and(|p| p.eq_ignore_ascii_case(b"UNSIGNED-PAYLOAD"));
    let by_header = headers.get_all(AUTHORIZATION).iter().any(|v| {
        let v = v.as_bytes().trim_ascii_start();
        AWS_ALGORITHMS
            .iter()
            .any(|a| v.len() >= a.len() && v[..a.len()].eq_ignore_ascii_case(a.as_bytes()))
    });
    if by_header && !unsigned {
        return Some("AWS SigV4");
    }
    // A presigned URL signs UNSIGNED-PAYLOAD unless the client put the
    // payload's hash among the signed headers.
    let by_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k.eq_ignore_ascii_case("X-Amz-Signature"))
    });
    if by_query && payload.is_some() && !unsigned {
        return Some("AWS SigV4");
    }
    None
}

/// SigV4 and SigV4a (multi-region), as the Authorization header names them.
const AWS_ALGORITHMS: [&str; 2] = ["AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"];

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";

    #[test]
    fn sigv4_in_any_case_covers_the_body() {
        for auth in [AUTH, &AUTH.to_lowercase(), &format!("  {AUTH}")] {
            let map = headers(&[("authorization", auth)]);
            assert_eq!(body_signature(&map, None), Some("AWS SigV4"), "{auth}");
        }
        let sigv4a = headers(&[("authorization", "AWS4-ECDSA-P256-SHA256 Credential=x")]);
        assert_eq!(body_signature(&sigv4a, None), Some("AWS SigV4"));
        let chunked = headers(&[
            ("authorization", AUTH),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ]);
        assert_eq!(body_signature(&chunked, None), Some("AWS SigV4"));
    }

    #[test]
    fn an_unsigned_payload_or_a_bearer_key_leaves_the_body_free() {
        let unsigned = headers(&[
            ("authorization", AUTH),
            ("x-amz-content-sha256", "unsigned-payload"),
        ]);
        assert_eq!(body_signature(&unsigned, None), None);
        let bearer = headers(&[("authorization", "Bearer sk-test")]);
        assert_eq!(body_signature(&bearer, None), None);
        assert_eq!(body_signature(&HeaderMap::new(), None), None);
    }

    #[test]
    fn a_presigned_url_covers_the_body_only_with_its_hash_signed() {
        let query = Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc");
        assert_eq!(body_signature(&HeaderMap::new(), query), None);
        let hashed = headers(&[("x-amz-content-sha256", "e3b0c442")]);
        assert_eq!(body_signature(&hashed, query), Some("AWS SigV4"));
        let encoded = Some("X%2DAmz%2DSignature=abc");
        assert_eq!(body_signature(&hashed, encoded), Some("AWS SigV4"));
    }
}
