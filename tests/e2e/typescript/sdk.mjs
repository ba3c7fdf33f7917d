// The unmodified Pinecone TypeScript SDK (@pinecone-database/pinecone 9) through the proxy.
//
// The SDK's token exchange goes to a fixed https://login.pinecone.io/oauth/token, so a
// `fetchApi` wrapper sends that and every Admin API call to the proxy (PROXY). The proxy
// answers the exchange with a placeholder and replaces it on every call; the fake
// Pinecone behind `pinecone-admin-proxy demo` answers 401 to tokens it did not issue, so
// each success proves the upstream saw the proxy's token.
import { AdminClient, Pinecone } from '@pinecone-database/pinecone';

const proxy = process.env.PROXY;
const toProxy = (input, init) => {
  const url = new URL(typeof input === 'string' ? input : input.url);
  return fetch(proxy + url.pathname + url.search, init);
};

const check = (condition, what) => {
  if (!condition) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
};

const admin = new AdminClient({ clientId: 'unused', clientSecret: 'unused', controllerHostUrl: proxy, fetchApi: toProxy });
const projects = await admin.projects.list();
check(projects.data.some((p) => p.name === 'demo-project'), 'projects.list');
const project = await admin.projects.create({ name: 'ts-project' });
check(project.name === 'ts-project', 'projects.create');
const key = await admin.apiKeys.create(project.id, { name: 'ts-key' });
check(key.key.name === 'ts-key' && key.value.startsWith('pckey_'), 'apiKeys.create');
check((await admin.apiKeys.list(project.id)).data.length === 1, 'apiKeys.list');
await admin.apiKeys.delete(key.key.id);
await admin.projects.delete(project.id);
check(!(await admin.projects.list()).data.some((p) => p.name === 'ts-project'), 'projects.delete');
const accounts = await admin.serviceAccounts.list();
check(accounts.data.length >= 1, 'serviceAccounts.list');

// The control plane, with the proxy's managed API key (the SDK's is a placeholder, which the
// fake would answer 401): no fetchApi needed, controllerHostUrl is enough.
const pc = new Pinecone({ apiKey: 'unused', controllerHostUrl: proxy });
await pc.createIndex({ name: 'ts-index', dimension: 8, metric: 'cosine', spec: { serverless: { cloud: 'aws', region: 'us-east-1' } }, waitUntilReady: true });
check((await pc.listIndexes()).indexes.some((i) => i.name === 'ts-index'), 'listIndexes sees the new index');
const described = await pc.describeIndex('ts-index');
check(described.dimension === 8 && described.host.startsWith('127.0.0.1:'), 'describeIndex, with its host');
await pc.deleteIndex('ts-index');
check(!(await pc.listIndexes()).indexes?.some((i) => i.name === 'ts-index'), 'deleteIndex');

// The data plane of the demo's index, through its listener (REST; the SDK has no gRPC).
const index = pc.index({ host: 'http://127.0.0.1:8485' });
await index.upsert({ records: [{ id: 'ts-1', values: [1.0, 0.0, 0.0] }, { id: 'ts-2', values: [0.0, 1.0, 0.0] }], namespace: 'ts' });
const found = await index.query({ vector: [0.1, 0.9, 0.0], topK: 1, namespace: 'ts' });
check(found.matches[0].id === 'ts-2', 'index.upsert and index.query');
console.log('typescript SDK through the proxy: all checks passed');
