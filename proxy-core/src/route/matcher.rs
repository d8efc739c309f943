//! Request matching for HTTP routes: the conditions of a Gateway API `HTTPRouteMatch` and of
//! an SMI `HTTPRouteGroup` match, and the order in which competing routes are tried.
//!
//! All conditions of one [`HttpMatch`] must hold. Regular expressions are compiled once, when
//! the config is loaded; matching a request allocates nothing.

use std::cmp::Ordering;

use http::{HeaderMap, Method, Uri};
use regex::Regex;

/// The parts of a request that routes match on.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (path and query).
    pub uri: &'a Uri,
    /// The header fields.
    pub headers: &'a HeaderMap,
}

/// A condition on the path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path equals the value.
    Exact(String),
    /// The path starts with the value, on a `/` boundary (`/api` matches `/api` and
    /// `/api/x` but not `/apix`), as Gateway API specifies.
    Prefix(String),
    /// The regular expression matches, anchored as the route kind defines (see
    /// [`anchored`]).
    Regex(Regex),
}

/// A condition on a header or query parameter value.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// Equal to the string.
    Exact(String),
    /// The whole value matches the regular expression.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => s == value,
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// One set of conditions, all of which must hold.
#[derive(Clone, Debug, Default)]
pub struct HttpMatch {
    /// On the path; none matches every path.
    pub path: Option<PathMatch>,
    /// On the method; none matches every method.
    pub methods: Vec<Method>,
    /// On header values, by lower-case name.
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    /// On query parameter values, by exact name.
    pub query: Vec<(String, ValueMatch)>,
}

impl HttpMatch {
    /// Whether `head` meets every condition.
    pub fn matches(&self, head: &RequestHead<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(head.method) {
            return false;
        }
        if let Some(path) = &self.path {
            let p = head.uri.path();
            let ok = match path {
                PathMatch::Exact(v) => p == v,
                PathMatch::Prefix(v) => prefix_matches(v, p),
                PathMatch::Regex(r) => r.is_match(p),
            };
            if !ok {
                return false;
            }
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            // A repeated header is matched on its values joined, as a proxy would fold them.
            let mut values = head.headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => false,
                (Some(v), None) => v.to_str().is_ok_and(|v| want.matches(v)),
                (Some(_), Some(_)) => {
                    let joined: Vec<&str> = head
                        .headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    want.matches(&joined.join(","))
                }
            }
        });
        if !headers_ok {
            return false;
        }
        self.query.iter().all(|(name, want)| {
            // The first occurrence decides, as Gateway API recommends.
            query_value(head.uri.query().unwrap_or(""), name).is_some_and(|v| want.matches(v))
        })
    }

    /// Gateway API's precedence between matches of competing rules: an exact path first,
    /// then (where the spec leaves it to implementations, Linkerd's order) regular
    /// expressions, longest first, then the longest prefix; then a method condition, then the
    /// most header conditions, then the most query conditions. `Ordering::Less` means `self` is tried first; equal ones
    /// keep their config order.
    pub fn precedence(&self, other: &Self) -> Ordering {
        fn path_rank(m: &HttpMatch) -> (u8, usize) {
            match &m.path {
                Some(PathMatch::Exact(v)) => (3, v.len()),
                Some(PathMatch::Regex(r)) => (2, r.as_str().len()),
                Some(PathMatch::Prefix(v)) => (1, v.len()),
                // No path condition is the same as the prefix `/`.
                None => (1, 1),
            }
        }
        path_rank(other)
            .cmp(&path_rank(self))
            .then_with(|| (!other.methods.is_empty()).cmp(&!self.methods.is_empty()))
            .then_with(|| other.headers.len().cmp(&self.headers.len()))
            .then_with(|| other.query.len().cmp(&self.query.len()))
    }
}

pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A service's routes, in the order they are tried, and where unmatched requests go.
#[derive(Debug)]
pub struct RouteSet<T> {
    entries: Vec<(HttpMatch, T)>,
    fallback: Option<T>,
}

impl<T> RouteSet<T> {
    /// Orders `entries` (given in config order) by [`HttpMatch::precedence`], keeping config
    /// order among equals. Requests no entry matches go to `fallback` (SMI: the apex
    /// service), or are refused when there is none (Gateway API).
    pub fn new(mut entries: Vec<(HttpMatch, T)>, fallback: Option<T>) -> Self {
        entries.sort_by(|a, b| a.0.precedence(&b.0));
        Self { entries, fallback }
    }

    /// The target of the first entry matching `head`, else the fallback.
    pub fn find(&self, head: &RequestHead<'_>) -> Option<&T> {
        self.entries
            .iter()
            .find(|(m, _)| m.matches(head))
            .map(|(_, t)| t)
            .or(self.fallback.as_ref())
    }
}

/// Where a route kind anchors its regular expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// At the start only (SMI `pathRegex`).
    Start,
    /// The whole input (Gateway API, and header and query values).
    Whole,
}

/// Compiles `pattern` anchored as `anchor` says.
pub fn anchored(pattern: &str, anchor: Anchor) -> Result<Regex, regex::Error> {
    match anchor {
        Anchor::Start => Regex::new(&format!("^(?:{pattern})")),
        Anchor::Whole => Regex::new(&format!("^(?:{pattern})$")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method,
            uri,
            headers,
        }
    }

    fn check(m: &HttpMatch, method: &str, uri: &str, headers: &[(&str, &str)]) -> bool {
        let method: Method = method.parse().unwrap();
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m.matches(&head(&method, &uri, &map))
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let m = HttpMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            ..Default::default()
        };
        assert!(check(&m, "GET", "/api", &[]));
        assert!(check(&m, "GET", "/api/v1?x=1", &[]));
        assert!(!check(&m, "GET", "/apix", &[]));
        let root = HttpMatch {
            path: Some(PathMatch::Prefix("/".into())),
            ..Default::default()
        };
        assert!(check(&root, "GET", "/anything", &[]));
        let slash = HttpMatch {
            path: Some(PathMatch::Prefix("/api/".into())),
            ..Default::default()
        };
        assert!(check(&slash, "GET", "/api/x", &[]));
        assert!(check(&slash, "GET", "/api", &[]));
    }

    #[test]
    fn smi_regexes_anchor_at_the_start_only_and_gateway_ones_at_both_ends() {
        let smi = HttpMatch {
            path: Some(PathMatch::Regex(
                anchored("/api/.*", Anchor::Start).unwrap(),
            )),
            ..Default::default()
        };
        assert!(check(&smi, "GET", "/api/users", &[]));
        assert!(!check(&smi, "GET", "/v1/api/users", &[]));
        let metrics = HttpMatch {
            path: Some(PathMatch::Regex(
                anchored("/metrics", Anchor::Start).unwrap(),
            )),
            ..Default::default()
        };
        assert!(check(&metrics, "GET", "/metrics/extra", &[]));
        let gateway = HttpMatch {
            path: Some(PathMatch::Regex(
                anchored("/metrics", Anchor::Whole).unwrap(),
            )),
            ..Default::default()
        };
        assert!(!check(&gateway, "GET", "/metrics/extra", &[]));
        assert!(check(&gateway, "GET", "/metrics", &[]));
    }

    #[test]
    fn every_condition_must_hold() {
        let m = HttpMatch {
            path: Some(PathMatch::Exact("/login".into())),
            methods: vec![Method::POST],
            headers: vec![(
                http::HeaderName::from_static("user-agent"),
                ValueMatch::Regex(anchored(".*Firefox.*", Anchor::Whole).unwrap()),
            )],
            query: vec![("debug".into(), ValueMatch::Exact("1".into()))],
        };
        let ua = [("user-agent", "Mozilla/5.0 Firefox/120")];
        assert!(check(&m, "POST", "/login?a=b&debug=1", &ua));
        assert!(!check(&m, "GET", "/login?debug=1", &ua));
        assert!(!check(&m, "POST", "/login?debug=2", &ua));
        assert!(!check(
            &m,
            "POST",
            "/login?debug=1",
            &[("user-agent", "curl")]
        ));
        assert!(!check(&m, "POST", "/login?debug=1", &[]));
        assert!(!check(&m, "POST", "/login/x?debug=1", &ua));
    }

    #[test]
    fn precedence_follows_gateway_api() {
        let exact = HttpMatch {
            path: Some(PathMatch::Exact("/a".into())),
            ..Default::default()
        };
        let long_prefix = HttpMatch {
            path: Some(PathMatch::Prefix("/a/b/c".into())),
            ..Default::default()
        };
        let short_prefix = HttpMatch {
            path: Some(PathMatch::Prefix("/a".into())),
            ..Default::default()
        };
        let with_method = HttpMatch {
            methods: vec![Method::GET],
            ..short_prefix.clone()
        };
        let with_header = HttpMatch {
            headers: vec![(
                http::HeaderName::from_static("x"),
                ValueMatch::Exact("1".into()),
            )],
            ..with_method.clone()
        };
        let mut list = [
            &short_prefix,
            &with_header,
            &exact,
            &with_method,
            &long_prefix,
        ];
        list.sort_by(|a, b| a.precedence(b));
        let order: Vec<String> = list.iter().map(|m| format!("{m:?}")).collect();
        let want: Vec<String> = [
            &exact,
            &long_prefix,
            &with_header,
            &with_method,
            &short_prefix,
        ]
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
        assert_eq!(order, want);
    }
}
