// Checks every Istio object in the given YAML files against Istio's CRD schemas, as compiled
// into ajv validators by @kubernetes-models/istio: field types, enums, required fields.
// (The generated validators accept unknown fields, so a misspelt optional field passes.)
// Documents of other API groups are passed over. Exit 1 when an object fails or none was seen.
import { readFileSync } from "node:fs";
import { loadAll } from "js-yaml";

const VERSIONS = [
  "networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1",
  "extensions.istio.io/v1alpha1", "security.istio.io/v1", "security.istio.io/v1beta1",
  "telemetry.istio.io/v1",
];
const models = Object.fromEntries(
  await Promise.all(VERSIONS.map(async (v) => [v, await import(`@kubernetes-models/istio/${v}`)])));

const results = { ok: 0, failed: 0 };
for (const file of process.argv.slice(2)) {
  for (const obj of loadAll(readFileSync(file, "utf8"))) {
    const apiVersion = String(obj?.apiVersion ?? "");
    if (!apiVersion.includes("istio.io")) continue;
    const label = `${obj.kind}/${obj.metadata?.name ?? "(unnamed)"} in ${file}`;
    const Model = models[apiVersion]?.[obj.kind];
    if (!Model) {
      results.failed++;
      console.log(`FAIL ${label}: Istio has no ${obj.kind} in ${apiVersion}`);
      continue;
    }
    try {
      new Model(obj).validate();
      results.ok++;
      console.log(`ok   ${label}`);
    } catch (err) {
      results.failed++;
      console.log(`FAIL ${label}: ${err.message}`);
    }
  }
}
console.log(`${results.ok} passed, ${results.failed} failed`);
process.exit(results.failed > 0 || results.ok === 0 ? 1 : 0);
