// Validates Kubernetes objects against Kubernetes' own API schemas (the npm package
// kubernetes-models; ServiceMonitor from @kubernetes-models/prometheus-operator).
//
//   node validate-k8s.mjs NODE_MODULES_DIR < objects.json      (a JSON array of objects)
//
// Prints one line per object ("ok KIND NAME" or "invalid KIND NAME: why") and exits 1 if any
// object is invalid or of a kind it has no schema for.
import { pathToFileURL } from "node:url";
import { readFileSync } from "node:fs";
import path from "node:path";

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const obj of objects) {
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const pkg = group.endsWith("coreos.com") ? "@kubernetes-models/prometheus-operator" : "kubernetes-models";
  const file = path.join(modules, pkg, group, version, `${obj.kind}.js`);
  const name = `${obj.kind} ${obj.metadata?.name}`;
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[obj.kind];
  } catch (e) {
    console.log(`invalid ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${name}`);
  } catch (e) {
    console.log(`invalid ${name}: ${e.message.replace(/\s+/g, " ").slice(0, 400)}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
