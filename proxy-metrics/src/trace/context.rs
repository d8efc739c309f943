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
    /// B3's debug flag (`b3: ...-d`, `x-b3-flags: 1`): sampled, and passed on as debug.
    pub debug: bool,
    /// Where it came from.
    pub format: Format,
}

/// What a request says about its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A parent span.
    Parent(Parent),
    /// A sampling decision without ids (`b3: 0`, `b3: 1`, `b3: d`, or `x-b3-sampled` or
    /// `x-b3-flags` alone): `true` to record a new trace whatever the ratio.
    Decision(bool),
    /// Nothing usable: a new trace, sampled by ratio.
    Nothing,
}

/// Reads the caller's context: a valid W3C `traceparent` first, then B3 single, then B3
/// multi, then a B3 decision alone. A malformed context is skipped (the next format is
/// tried), as the W3C specification asks of a `traceparent` it cannot parse.
pub fn extract(headers: &HeaderMap) -> Incoming {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(parent) = get("traceparent").and_then(parse_traceparent) {
        return Incoming::Parent(parent);
    }
    if let Some(b3) = get("b3") {
        match b3.trim() {
            "0" => return Incoming::Decision(false),
            "1" | "d" => return Incoming::Decision(true),
            value => {
                if let Some(parent) = parse_b3_single(value) {
                    return Incoming::Parent(parent);
                }
            }
        }
    }
    let debug = get("x-b3-flags") == Some("1");
    let sampled = match get("x-b3-sampled") {
        _ if debug => Some(Sampled::Yes),
        Some("1" | "true") => Some(Sampled::Yes),
        Some("0" | "false") => Some(Sampled::No),
        None => Some(Sampled::Deferred),
        Some(_) => None,
    };
    // B3 ids are hex in any case; W3C's must be lower-case.
    let ids = get("x-b3-traceid")
        .zip(get("x-b3-spanid"))
        .and_then(|(t, s)| {
            let trace_id = hex_id::<16>(&t.to_ascii_lowercase(), true)?;
            let span_id = hex_id::<8>(&s.to_ascii_lowercase(), false)?;
            Some((trace_id, span_id))
        });
    match (ids, sampled) {
        (Some((trace_id, span_id)), Some(sampled)) => Incoming::Parent(Parent {
            trace_id,
            span_id,
            sampled,
            debug,
            format: Format::B3Multi,
        }),
        (None, Some(Sampled::Yes)) if get("x-b3-traceid").is_none() => Incoming::Decision(true),
        (None, Some(Sampled::No)) if get("x-b3-traceid").is_none() => Incoming::Decision(false),
        _ => Incoming::Nothing,
    }
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
        debug: false,
        format: Format::W3c,
    })
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`, sampled one of `0`, `1`, `d` (debug).
fn parse_b3_single(value: &str) -> Option<Parent> {
    let value = value.trim().to_ascii_lowercase();
    let mut parts = value.split('-');
    let trace_id = hex_id::<16>(parts.next()?, true)?;
    let span_id = hex_id::<8>(parts.next()?, false)?;
    let (sampled, debug) = match parts.next() {
        None => (Sampled::Deferred, false),
        Some("1") => (Sampled::Yes, false),
        Some("d") => (Sampled::Yes, true),
        Some("0") => (Sampled::No, false),
        Some(_) => return None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        debug,
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
    /// B3's debug flag, passed on.
    pub debug: bool,
}

/// The longest `tracestate` passed on and recorded: the W3C limit for what a vendor must
/// propagate. A longer one is dropped whole rather than cut into entries it cannot judge.
pub const TRACESTATE_MAX: usize = 512;

/// Writes this hop's span as the parent for the next hop: `traceparent` always, and each
/// B3 form the request carries (so an application reading B3 first sees the same parent).
/// `tracestate` stays only under the caller's own valid `traceparent` (`keep_state`), and
/// only up to [`TRACESTATE_MAX`]: with a new or B3 context it belongs to another trace.
pub fn inject(headers: &mut HeaderMap, out: Outgoing<'_>, keep_state: bool) {
    let oversized = headers
        .get("tracestate")
        .is_some_and(|v| v.len() > TRACESTATE_MAX);
    if !keep_state || oversized {
        headers.remove("tracestate");
    }
    let single = headers.contains_key("b3");
    let multi = ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"]
        .iter()
        .any(|h| headers.contains_key(*h));
    let flag = if out.sampled { "01" } else { "00" };
    let (trace, span) = (hex(out.trace_id), hex(out.span_id));
    let parent = out.parent.map(|p| hex(p));
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("traceparent", format!("00-{trace}-{span}-{flag}"));
    let b3_flag = match (out.debug, out.sampled) {
        (true, _) => "d",
        (false, true) => "1",
        (false, false) => "0",
    };
    if single {
        match &parent {
            Some(p) => set("b3", format!("{trace}-{span}-{b3_flag}-{p}")),
            None => set("b3", format!("{trace}-{span}-{b3_flag}")),
        }
    }
    if multi {
        set("x-b3-traceid", trace);
        set("x-b3-spanid", span);
        if let Some(p) = parent {
            set("x-b3-parentspanid", p);
        }
        // Debug implies sampled, and is sent alone (B3: "don't also send X-B3-Sampled").
        if out.debug {
            set("x-b3-flags", "1".to_owned());
        } else {
            set("x-b3-sampled", b3_flag.to_owned());
        }
        if out.parent.is_none() {
            headers.remove("x-b3-parentspanid");
        }
        if out.debug {
            headers.remove("x-b3-sampled");
        }
    }
}
