// Validates Kubernetes manifests of custom resources (deploy/gateway-api) offline, against the
// CRD schemas of Envoy Gateway, the Gateway API and Istio as the kubernetes-models packages
// ship them (JSON schema validators generated from the projects' CRDs).
//
// A CRD schema accepts fields it does not know (the API server would drop them in silence), so
// a misspelt key would pass. Each key is therefore also probed: its value is replaced by a
// function, which no typed field (string, number, boolean, object, array, int-or-string)
// accepts; a key whose probe passes is not in the schema, and is refused here, unless it lies
// under a subtree the CRD leaves untyped (listed with --untyped KIND:path, e.g.
// IstioOperator:spec.meshConfig).
//
// Usage: node validate_manifests.mjs [--untyped Kind:path]... FILE...
// Prints one JSON line: {"documents": n, "kinds": [...], "errors": [...], "untyped": [...]};
// exits 1 when there is an error.
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { ClientTrafficPolicy } from '@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy';
import { SecurityPolicy } from '@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1/SecurityPolicy';
import { HTTPRoute } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute';
import { AuthorizationPolicy } from '@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy';
import { IstioOperator } from '@kubernetes-models/istio/install.istio.io/v1alpha1/IstioOperator';

const MODELS = [ClientTrafficPolicy, SecurityPolicy, HTTPRoute, AuthorizationPolicy, IstioOperator];

const args = process.argv.slice(2);
const untyped = [];
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--untyped') untyped.push(args[++i]);
  else files.push(args[i]);
}

const errors = [];
const seenUntyped = [];
const kinds = [];
let documents = 0;

/// The validator's errors for `data` (an empty list when valid).
function problems(Model, data) {
  try {
    new Model(data).validate();
    return [];
  } catch (e) {
    return e.errors ?? [{ instancePath: '', message: String(e.message ?? e) }];
  }
}

/// Every key path under `node` (the manifest's own keys, metadata aside), as arrays.
function paths(node, at = []) {
  const out = [];
  if (Array.isArray(node)) {
    node.forEach((v, i) => out.push(...paths(v, [...at, i])));
  } else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (at.length === 0 && ['apiVersion', 'kind', 'metadata'].includes(k)) continue;
      out.push([...at, k], ...paths(v, [...at, k]));
    }
  }
  return out;
}

function probed(doc, path) {
  const copy = structuredClone(doc);
  let node = copy;
  for (const k of path.slice(0, -1)) node = node[k];
  node[path[path.length - 1]] = () => 'not a value of any schema type';
  return copy;
}

for (const file of files) {
  let parsed;
  try {
    parsed = parseAllDocuments(readFileSync(file, 'utf8'));
  } catch (e) {
    errors.push(`${file}: ${e.message}`);
    continue;
  }
  for (const d of parsed) {
    if (d.errors.length) {
      errors.push(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
      continue;
    }
    const doc = d.toJS();
    if (!doc) continue;
    documents++;
    const where = `${file}: ${doc.kind ?? '?'} ${doc.metadata?.name ?? '?'}`;
    const Model = MODELS.find((m) => m.apiVersion === doc.apiVersion && m.kind === doc.kind);
    if (!Model) {
      errors.push(`${where}: no schema here for ${doc.apiVersion} ${doc.kind}`);
      continue;
    }
    kinds.push(`${doc.apiVersion}/${doc.kind}`);
    for (const p of problems(Model, doc)) {
      errors.push(`${where}: ${p.instancePath || '/'} ${p.message}${p.params ? ' ' + JSON.stringify(p.params) : ''}`);
    }
    for (const path of paths(doc)) {
      const dotted = path.join('.');
      const free = untyped.find((u) => {
        const [kind, prefix] = u.split(':');
        return kind === doc.kind && (dotted === prefix || dotted.startsWith(prefix + '.'));
      });
      if (typeof path[path.length - 1] === 'number') continue;
      const pointer = '/' + path.join('/');
      const refused = problems(Model, probed(doc, path)).some(
        (e) => e.instancePath === pointer || e.instancePath.startsWith(pointer + '/'),
      );
      if (refused) continue;
      if (free) {
        if (dotted.split('.').length === free.split(':')[1].split('.').length + 1) {
          seenUntyped.push(`${doc.kind} ${dotted}`);
        }
        continue;
      }
      errors.push(`${where}: ${dotted} is not a field of the ${doc.kind} schema`);
    }
  }
}

console.log(JSON.stringify({ documents, kinds, errors, untyped: seenUntyped }));
process.exit(errors.length ? 1 : 0);
