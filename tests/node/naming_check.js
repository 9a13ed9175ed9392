// The npm `nacos` 2.6.3 naming client against a node:
//   node naming_check.js ADDR USERNAME PASSWORD SERVICE IP
// registers IP:8080 in SERVICE, lists it, deregisters it, and prints one
// JSON line with the list it saw; a refused request exits 1 with the error.
'use strict';

const { NacosNamingClient } = require('nacos');

const [addr, username, password, service, ip] = process.argv.slice(2);
// Warnings (a refused request's status and message) go to stderr.
const quiet = { info() {}, debug() {}, warn: (...a) => console.error(...a), error: (...a) => console.error(...a) };

async function main() {
  const client = new NacosNamingClient({
    logger: quiet,
    serverList: addr,
    namespace: 'public',
    username,
    password,
  });
  await client.ready();
  try {
    await client.registerInstance(service, { ip, port: 8080 });
    const listed = (await client.getAllInstances(service, 'DEFAULT_GROUP', '', false))
      .map(h => `${h.ip}:${h.port}`);
    await client.deregisterInstance(service, { ip, port: 8080 });
    // (An empty list it would not show: the client keeps its last
    // non-empty one. The caller checks the deregister.)
    console.log(JSON.stringify({ listed }));
  } finally {
    client.close();
  }
}

main().then(() => process.exit(0), err => {
  console.error(String(err && err.message || err));
  process.exit(1);
});
