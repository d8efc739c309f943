//! The mesh documents of a file as a whole: what is refused alone (a route with a filter or
//! annotation Skiff cannot honour), what is only a warning (an unknown field of a route kind)
//! and what stays an error (an unknown field of an access kind, a bad host name).

use super::super::tests::{ok, rejected, MESH_HEAD};

#[test]
fn access_documents_refuse_unknown_fields_where_routes_only_warn() {
    let head = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  identity: {dir: /nonexistent, serviceAccount: api}
  services:
    web: {endpoints: [127.0.0.1:1]}
";
    // A misspelt `ports` would allow every port: an error, with its line.
    let e = rejected(
        &format!(
            "{head}---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {{name: db}}
spec:
  matches: {{port: [5432]}}
"
        ),
        "access documents take no unknown fields",
    );
    assert_eq!(e.line, Some(12), "{e:?}");
    // The same slip in a route is a warning, and the rest applies.
    let c = ok(&format!(
        "{head}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, annotations: {{example.com/flag: true}}}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules: [{{backendRef: [{{name: web}}]}}]
"
    ));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("backendRef"));
}

#[test]
fn a_route_with_an_unreadable_annotation_or_a_rule_only_backend_filter_is_refused_alone() {
    let route = |name: &str, extra: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}{extra}}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
"
        )
    };
    let text = format!(
        "{MESH_HEAD}{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend-redirect}}
spec:
  parentRefs: [{{kind: Service, name: web-v2}}]
  rules:
  - backendRefs:
    - name: web-v2
      filters: [{{type: RequestRedirect, requestRedirect: {{hostname: x}}}}]
",
        route(
            "bad-annotation",
            ", annotations: {timeout.linkerd.io/request: soon}"
        ),
        route("fine", ""),
    );
    let c = ok(&text);
    let messages: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("timeout.linkerd.io/request"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("backendRefs[0].filters"),
        "{messages:?}"
    );
    assert!(c.routes.contains_key("web"), "the good route applies");
    assert!(!c.routes.contains_key("web-v2"));
}

#[test]
fn a_rewrite_or_redirect_host_must_be_a_host_name() {
    for (filter, stanza) in [
        ("URLRewrite", "urlRewrite"),
        ("RequestRedirect", "requestRedirect"),
    ] {
        rejected(
            &format!(
                "{MESH_HEAD}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules:
  - filters: [{{type: {filter}, {stanza}: {{hostname: 'bad host:99'}}}}]
"
            ),
            "is not a host name",
        );
    }
}
