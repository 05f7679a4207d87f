// Unit tests of the SDK's logic, in node (no browser): node --test tests/js/
import test from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

function fakeBrowser() {
  const store = new Map();
  globalThis.sessionStorage = {
    getItem: (k) => (store.has(k) ? store.get(k) : null),
    setItem: (k, v) => store.set(k, String(v)),
    removeItem: (k) => store.delete(k),
  };
  globalThis.document = { readyState: "complete", addEventListener() {}, visibilityState: "visible" };
  globalThis.addEventListener = () => {};
  const sent = [];
  globalThis.fetch = async (url, options) => {
    sent.push({ url, options });
    return { ok: true, status: 200, json: async () => ({ recommendations: [], message: "m" }) };
  };
  delete globalThis.navigator;
  return { store, sent };
}

const require = createRequire(import.meta.url);
function loadSdk() {
  const path = require.resolve("../../service/static/sdk.js");
  delete require.cache[path];
  return require(path);
}

test("a later, stronger interaction raises the rating; a weaker one never lowers it", () => {
  const { _addInteraction: add } = loadSdk();
  let m = add({}, "a", 1, 100, 10);
  m = add(m, "a", 3, 105, 10);
  assert.deepEqual(m, { a: { timestamp: 105, rating: 3 } });
  m = add(m, "a", 1, 110, 10);
  assert.deepEqual(m, { a: { timestamp: 110, rating: 3 } });
});

test("the interaction map keeps the most recent items up to the cap", () => {
  const { _addInteraction: add } = loadSdk();
  let m = {};
  for (let i = 0; i < 5; i++) m = add(m, "i" + i, 1, 100 + i, 3);
  assert.deepEqual(Object.keys(m).sort(), ["i2", "i3", "i4"]);
});

test("track stores the seed's shape and sends a batch of events", async () => {
  const { store, sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "http://api", autoTrack: false, flushInterval: 5 });
  sdk.track("89898", "click");
  sdk.track(22898);
  const interactions = JSON.parse(store.get("sessionrec:interactions"));
  assert.deepEqual(Object.keys(interactions).sort(), ["22898", "89898"]);
  assert.equal(interactions["89898"].rating, 3);
  assert.equal(interactions["22898"].rating, 1);
  assert.ok(Number.isInteger(interactions["89898"].timestamp));
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(sent.length, 1);
  assert.equal(sent[0].url, "http://api/events");
  const body = JSON.parse(sent[0].options.body);
  assert.equal(body.events.length, 2);
  assert.equal(body.events[0].session_id, sdk.sessionId());
  assert.deepEqual(body.events.map((e) => [e.item_id, e.type]), [["89898", "click"], ["22898", "view"]]);
});

test("recommend posts the stored interactions in the seed's request", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, k: 4, recommendSeen: true, flushInterval: 5 });
  sdk.track("x", "purchase");
  const answer = await sdk.recommend();
  assert.equal(answer.message, "m");
  const call = sent.find((c) => c.url === "/iid_recommend");
  const body = JSON.parse(call.options.body);
  assert.deepEqual(Object.keys(body), ["user_interactions", "k", "recommend_seen"]);
  assert.equal(body.k, 4);
  assert.equal(body.recommend_seen, true);
  assert.equal(body.user_interactions.x.rating, 5);
  await new Promise((r) => setTimeout(r, 30)); // let the event batch go before the next test
});

test("without consent nothing is stored or sent", async () => {
  const { store, sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5 });
  sdk.setConsent(false);
  sdk.track("a", "click");
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual([...store.keys()], []);
  assert.equal(sent.length, 0);
});
