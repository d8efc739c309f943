//! Skiff's TLS side.
//!
//! Today it recognises TLS on the wire, so protocol detection can tell a ClientHello from
//! plaintext; inbound TLS is forwarded untouched to the application until Skiff terminates
//! mesh mTLS itself. Credentials, SPIFFE identity checks and rustls configs will live here.

/// Whether `buf` starts like a TLS ClientHello: a handshake record (type 22) with a TLS
/// major version of 3. Returns `None` while fewer than three bytes have arrived.
pub fn looks_like_client_hello(buf: &[u8]) -> Option<bool> {
    match buf {
        [] => None,
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, _, ..] => Some(true),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_handshake_records() {
        assert_eq!(looks_like_client_hello(b"\x16\x03\x01"), Some(true));
        assert_eq!(looks_like_client_hello(b"\x16\x03"), None);
        assert_eq!(looks_like_client_hello(b"\x16\x02\x00"), Some(false));
        assert_eq!(looks_like_client_hello(b"GET "), Some(false));
        assert_eq!(looks_like_client_hello(b""), None);
    }
}
