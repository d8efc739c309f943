//! The DNS message format (RFC 1035), as much as a stub resolver needs: an A or AAAA query
//! with an EDNS(0) record offering a large UDP payload, and the addresses and TTLs of a
//! response's answer section. Everything read from the network is bounds-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The record types asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            Self::A => 1,
            Self::Aaaa => 28,
        }
    }
}

/// The UDP payload we offer to receive (EDNS), enough for a few hundred addresses.
pub(crate) const UDP_PAYLOAD: u16 = 4096;

const CLASS_IN: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_OPT: u16 = 41;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;

/// Why a response was not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The name cannot be put in a query.
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    /// The response is cut short or malformed.
    #[error("malformed DNS response")]
    Malformed,
    /// The response answers another query.
    #[error("DNS response for another query")]
    Mismatch,
    /// The server failed (SERVFAIL, REFUSED, ...).
    #[error("DNS server answered with rcode {0}")]
    Rcode(u16),
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Cut short: ask again over TCP.
    Truncated,
    /// The name does not exist (NXDOMAIN), or has no records of the type.
    Negative,
    /// Addresses, and the shortest TTL among them and the aliases leading to them.
    Addresses(Vec<IpAddr>, Duration),
}

/// Encodes a recursive query for `name` (absolute, without the trailing dot).
pub(crate) fn query(id: u16, name: &str, rtype: RecordType) -> Result<Vec<u8>, WireError> {
    let bad = || WireError::BadName(name.to_owned());
    let mut out = Vec::with_capacity(name.len() + 30);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    // One question, no answers or authority, one additional record (EDNS).
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&rtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type, payload size in the class field, no extended flags, no data.
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(out)
}

/// Reads the response to query `id` for records of `rtype`.
pub(crate) fn parse(msg: &[u8], id: u16, rtype: RecordType) -> Result<Response, WireError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16()? != id {
        return Err(WireError::Mismatch);
    }
    let flags = r.u16()?;
    if flags & FLAG_QR == 0 {
        return Err(WireError::Mismatch);
    }
    if flags & FLAG_TC != 0 {
        return Ok(Response::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Response::Negative),
        rcode => return Err(WireError::Rcode(rcode)),
    }
    let questions = r.u16()?;
    let answers = r.u16()?;
    r.skip(4)?; // authority and additional counts
    for _ in 0..questions {
        r.skip_name()?;
        r.skip(4)?;
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..answers {
        r.skip_name()?;
        let (kind, class, record_ttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
        let data = r.take(usize::from(len))?;
        if class != CLASS_IN {
            continue;
        }
        let addr = match (kind, data.len()) {
            (k, 4) if k == RecordType::A.code() && rtype == RecordType::A => {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).expect("4 bytes")))
            }
            (k, 16) if k == RecordType::Aaaa.code() && rtype == RecordType::Aaaa => IpAddr::V6(
                Ipv6Addr::from(<[u8; 16]>::try_from(data).expect("16 bytes")),
            ),
            (TYPE_CNAME, _) => {
                ttl = ttl.min(record_ttl);
                continue;
            }
            _ => continue,
        };
        ttl = ttl.min(record_ttl);
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Ok(Response::Negative);
    }
    Ok(Response::Addresses(
        addrs,
        Duration::from_secs(u64::from(ttl)),
    ))
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Malformed)?;
        let bytes = self.msg.get(self.pos..end).ok_or(WireError::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips a name in place: labels up to the root, or up to a compression pointer (whose
    /// target is not followed: only the position after the name matters here).
    fn skip_name(&mut self) -> Result<(), WireError> {
        loop {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xc0 == 0xc0 => return self.skip(1),
                l if l & 0xc0 == 0 => self.skip(usize::from(l))?,
                _ => return Err(WireError::Malformed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query` with the given answer records (type, ttl, data), each owned by
    /// a pointer to the question's name.
    pub(crate) fn answer(query: &[u8], rcode: u16, records: &[(u16, u32, &[u8])]) -> Vec<u8> {
        let mut out = query[..2].to_vec();
        out.extend_from_slice(&(FLAG_QR | FLAG_RD | 0x0080 | rcode).to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&(records.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        // The question, as asked (without the OPT record).
        let question_end = query.len() - 11;
        out.extend_from_slice(&query[12..question_end]);
        for (kind, ttl, data) in records {
            out.extend_from_slice(&[0xc0, 12]);
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn queries_carry_the_name_type_and_edns() {
        let q = query(0x1234, "web.ns.svc", RecordType::Aaaa).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..24], b"\x03web\x02ns\x03svc\x00");
        assert_eq!(&q[24..28], &[0, 28, 0, 1]);
        assert_eq!(&q[q.len() - 11..], &[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        for bad in ["", "a..b", &"x".repeat(64), &"a.".repeat(130)] {
            assert!(query(1, bad, RecordType::A).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_give_addresses_and_the_shortest_ttl() {
        let q = query(7, "web", RecordType::A).unwrap();
        let r = answer(
            &q,
            0,
            &[
                (TYPE_CNAME, 30, b"\x03pod\x00"),
                (1, 20, &[10, 0, 0, 1]),
                (1, 40, &[10, 0, 0, 2]),
                (28, 5, &[0; 16]), // another type: ignored
            ],
        );
        assert_eq!(
            parse(&r, 7, RecordType::A).unwrap(),
            Response::Addresses(
                vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
                Duration::from_secs(20)
            )
        );
        let q6 = query(8, "web", RecordType::Aaaa).unwrap();
        let r6 = answer(
            &q6,
            0,
            &[(28, 9, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])],
        );
        assert_eq!(
            parse(&r6, 8, RecordType::Aaaa).unwrap(),
            Response::Addresses(vec!["::1".parse().unwrap()], Duration::from_secs(9))
        );
    }

    #[test]
    fn negative_failed_truncated_and_foreign_responses() {
        let q = query(7, "web", RecordType::A).unwrap();
        assert_eq!(
            parse(&answer(&q, 3, &[]), 7, RecordType::A),
            Ok(Response::Negative)
        );
        assert_eq!(
            parse(&answer(&q, 0, &[]), 7, RecordType::A),
            Ok(Response::Negative)
        );
        assert_eq!(
            parse(&answer(&q, 2, &[]), 7, RecordType::A),
            Err(WireError::Rcode(2))
        );
        assert_eq!(
            parse(&answer(&q, 0, &[]), 8, RecordType::A),
            Err(WireError::Mismatch)
        );
        let mut truncated = answer(&q, 0, &[]);
        truncated[2] |= 0x02;
        assert_eq!(parse(&truncated, 7, RecordType::A), Ok(Response::Truncated));
        // Cut anywhere, a response is refused rather than misread.
        let full = answer(&q, 0, &[(1, 20, &[10, 0, 0, 1])]);
        for cut in 0..full.len() {
            assert!(
                parse(&full[..cut], 7, RecordType::A).is_err(),
                "cut at {cut}"
            );
        }
        // A query is not a response.
        assert_eq!(parse(&q, 7, RecordType::A), Err(WireError::Mismatch));
    }
}
