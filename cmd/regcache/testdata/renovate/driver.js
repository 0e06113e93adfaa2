// Drives Renovate's own code the way a Renovate run does for a Dockerfile, against a
// registry at a base URL: the dockerfile manager extracts the FROM lines with the
// repository config (registryAliases applied there), packageRules are merged per dependency
// (registryUrls), hostRules are loaded (insecureRegistry for plain http), then the docker
// datasource lists releases (getPkgReleases) and asks each release's digest (getDigest, with
// the dependency's current digest, as Renovate's lookup passes it).
//
//   node -r ./guard.js driver.js <renovate dir> <input.json> <output.json>
//
// input.json: {"config": <renovate.json>, "dockerfile": "FROM ..."}. The config is taken
// as given; the caller writes the base URL (scheme://host:port) into it, so the same driver
// runs over http or https (with NODE_EXTRA_CA_CERTS).
'use strict';
const fs = require('fs');
const path = require('path');

async function main() {
  const [dir, inFile, outFile] = process.argv.slice(2);
  const r = (m) => require(path.join(dir, 'node_modules', 'renovate', 'dist', m));
  const { GlobalConfig } = r('config/global');
  const hostRules = r('util/host-rules');
  const { applyPackageRules } = r('util/package-rules');
  const { extractPackageFile } = r('modules/manager/dockerfile/extract');
  const datasource = r('modules/datasource');
  const { getConfig } = r('config/defaults');

  const input = JSON.parse(fs.readFileSync(inFile, 'utf8'));
  GlobalConfig.set({ cacheDir: process.env.REGCACHE_RENOVATE_CACHE });
  const config = { ...getConfig(), ...input.config };
  for (const rule of config.hostRules ?? []) hostRules.add(rule);

  const extracted = extractPackageFile(input.dockerfile, 'Dockerfile', config);
  const out = [];
  for (const dep of extracted?.deps ?? []) {
    const c = await applyPackageRules({ ...config, ...dep, packageName: dep.packageName ?? dep.depName });
    let res = null;
    let error = null;
    try {
      res = await datasource.getPkgReleases(c);
    } catch (err) {
      error = String(err);
    }
    const got = {
      error,
      depName: dep.depName, packageName: c.packageName, currentValue: dep.currentValue,
      currentDigest: dep.currentDigest ?? null, registryUrls: c.registryUrls ?? null,
      registryUrl: res?.registryUrl ?? null, lookupName: res?.lookupName ?? null,
      releases: res ? res.releases.map((x) => x.version) : null, digests: {},
    };
    for (const v of got.releases ?? []) {
      got.digests[v] = await datasource.getDigest({ ...c, registryUrl: res.registryUrl, lookupName: res.lookupName }, v);
    }
    out.push(got);
  }
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
