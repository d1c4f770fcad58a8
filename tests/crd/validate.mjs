// Validates Cilium's custom resources against their CRD schemas (@kubernetes-models/cilium,
// generated from Cilium's Go types): reads a JSON array of Kubernetes objects on stdin (a
// `kubectl kustomize` render, turned into JSON by tests/it/kubernetes.rs), validates every
// object of a cilium.io API version, prints `valid KIND/NAME` for each, and exits 1 at the
// first one that fails (or whose kind the package does not know). Other objects are ignored.
import { readFileSync } from "node:fs";
import * as v2 from "@kubernetes-models/cilium/cilium.io/v2";
import * as v2alpha1 from "@kubernetes-models/cilium/cilium.io/v2alpha1";

const versions = { "cilium.io/v2": v2, "cilium.io/v2alpha1": v2alpha1 };
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const doc of docs) {
  if (!String(doc.apiVersion).startsWith("cilium.io/")) continue;
  const what = `${doc.kind}/${doc.metadata?.name}`;
  const Model = versions[doc.apiVersion]?.[doc.kind];
  if (typeof Model !== "function" || Model.kind !== doc.kind) {
    console.error(`unknown Cilium resource ${doc.apiVersion} ${doc.kind} (${what})`);
    failed = true;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`valid ${what}`);
  } catch (e) {
    console.error(`invalid ${what}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
