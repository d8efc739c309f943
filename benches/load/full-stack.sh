# The full-stack config both load scripts measure, sourced by run.sh and instructions.sh:
# an HTTPRoute with two rules, a 90/10 split, retries, a breaker, timeouts and a concurrency
# limit in front of the backend on 127.0.0.1:19000.

# The `services` entries (indented for a Proxy document's `spec.services`).
FULL_STACK_SERVICES="    backend:
      endpoints: [127.0.0.1:19000]
      timeouts: {request: 10s, backendRequest: 5s}
      retry: {attempts: 2}
      breaker: {consecutiveFailures: 7}
      maxInFlight: 100000
    backend-b:
      endpoints: [127.0.0.1:19000]"

# The HTTPRoute document, to append after the Proxy document.
full_stack_route() {
  cat <<'YAML'
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend}
spec:
  parentRefs: [{kind: Service, name: backend}]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}, {headers: [{name: x-canary, value: 'yes'}]}]
    backendRefs: [{name: backend, weight: 90}, {name: backend-b, weight: 10}]
  - name: rest
    backendRefs: [{name: backend, weight: 90}, {name: backend-b, weight: 10}]
YAML
}
