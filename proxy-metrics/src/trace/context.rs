//! Trace context propagation: reading the caller's trace context from W3C Trace Context
//! (`traceparent`, `tracestate`) or B3 (the single `b3` header, or `x-b3-*`), and writing
//! this hop's span as the parent of the next.
//!
//! W3C is always written, so every hop after Skiff understands the context; B3 headers are
//! rewritten as well when the caller used them, so applications that read only B3 see the
//! new parent too. A context that cannot be parsed is treated as absent, as the W3C
//! specification asks: the request starts a new trace rather than failing.

use http::{HeaderMap, HeaderValue};

/// A trace id, 16 bytes (a 64-bit B3 id is left-padded with zeros).
pub type TraceId = [u8; 16];
/// A span id, 8 bytes.
pub type SpanId = [u8; 8];

/// Which headers the caller's context came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `traceparent` (and `tracestate`).
    W3c,
    /// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
    B3Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`.
    B3Multi,
}

/// The caller's sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampled {
    /// Record this trace.
    Yes,
    /// Do not.
    No,
    /// The caller left it to us (B3 without a sampling flag).
    Deferred,
}

/// The context a request arrived with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of this hop's.
    pub span_id: SpanId,
    /// Whether the caller records the trace.
    pub sampled: Sampled,
    /// Where it came from.
    pub format: Format,
}

/// Reads the caller's context: W3C first, then B3 single, then B3 multi. `None` when there
/// is none, or it is malformed. A B3 header that carries only a decision (`b3: 0`) gives
/// no parent; [`decision_only`] reads it.
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tp) = get("traceparent") {
        return parse_traceparent(tp);
    }
    if let Some(b3) = get("b3") {
        return parse_b3_single(b3);
    }
    // B3 ids are hex in any case; W3C's must be lower-case.
    let trace_id = hex_id::<16>(&get("x-b3-traceid")?.to_ascii_lowercase(), true)?;
    let span_id = hex_id::<8>(&get("x-b3-spanid")?.to_ascii_lowercase(), false)?;
    let sampled = match (get("x-b3-flags"), get("x-b3-sampled")) {
        (Some("1"), _) => Sampled::Yes,
        (_, Some("1" | "true")) => Sampled::Yes,
        (_, Some("0" | "false")) => Sampled::No,
        (_, None) => Sampled::Deferred,
        (_, Some(_)) => return None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        format: Format::B3Multi,
    })
}

/// Whether the caller said "do not sample" without giving a context (`b3: 0`, or
/// `x-b3-sampled: 0` alone): then no span is made, and nothing is written.
pub fn decision_only(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    matches!(get("b3"), Some("0"))
        || (get("x-b3-traceid").is_none() && matches!(get("x-b3-sampled"), Some("0" | "false")))
}

/// `{version}-{trace-id}-{parent-id}-{flags}`. Version `ff` is invalid; a later version
/// may append fields, which are ignored.
fn parse_traceparent(value: &str) -> Option<Parent> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: hex_id::<16>(trace, false)?,
        span_id: hex_id::<8>(span, false)?,
        sampled: if flags & 1 == 1 {
            Sampled::Yes
        } else {
            Sampled::No
        },
        format: Format::W3c,
    })
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`, sampled one of `0`, `1`, `d` (debug).
fn parse_b3_single(value: &str) -> Option<Parent> {
    let value = value.trim().to_ascii_lowercase();
    let mut parts = value.split('-');
    let trace_id = hex_id::<16>(parts.next()?, true)?;
    let span_id = hex_id::<8>(parts.next()?, false)?;
    let sampled = match parts.next() {
        None => Sampled::Deferred,
        Some("1" | "d") => Sampled::Yes,
        Some("0") => Sampled::No,
        Some(_) => return None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        format: Format::B3Single,
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A lower-case hex id of exactly `N` bytes (or, with `short_ok`, of 8 bytes left-padded:
/// B3's 64-bit trace ids). All zeros is invalid in both formats.
fn hex_id<const N: usize>(hex: &str, short_ok: bool) -> Option<[u8; N]> {
    let pad = if hex.len() == 2 * N {
        0
    } else if short_ok && hex.len() == 16 {
        N - 8
    } else {
        return None;
    };
    if !is_lower_hex(hex) {
        return None;
    }
    let mut id = [0u8; N];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        id[pad + i] = u8::from_str_radix(text, 16).ok()?;
    }
    (id != [0u8; N]).then_some(id)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// This hop's span, as the next hop will see its parent.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The trace.
    pub trace_id: &'a TraceId,
    /// This hop's span.
    pub span_id: &'a SpanId,
    /// This hop's parent (the caller's span), for B3's parent field.
    pub parent: Option<&'a SpanId>,
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// The headers the caller used.
    pub format: Format,
}

/// Writes this hop's span as the parent for the next hop: `traceparent` always, and the B3
/// headers when the caller used B3. `tracestate` is left as received.
pub fn inject(headers: &mut HeaderMap, out: Outgoing<'_>) {
    let sampled = out.sampled;
    let flag = if sampled { "01" } else { "00" };
    let (trace, span) = (hex(out.trace_id), hex(out.span_id));
    let parent = out.parent.map(|p| hex(p));
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("traceparent", format!("00-{trace}-{span}-{flag}"));
    let b3_flag = if sampled { "1" } else { "0" };
    match out.format {
        Format::W3c => {}
        Format::B3Single => match &parent {
            Some(p) => set("b3", format!("{trace}-{span}-{b3_flag}-{p}")),
            None => set("b3", format!("{trace}-{span}-{b3_flag}")),
        },
        Format::B3Multi => {
            set("x-b3-traceid", trace);
            set("x-b3-spanid", span);
            set("x-b3-sampled", b3_flag.to_owned());
            match parent {
                Some(p) => set("x-b3-parentspanid", p),
                None => {
                    headers.remove("x-b3-parentspanid");
                }
            }
        }
    }
}
