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
  const path = require.resolve("../../service/api/static/sdk.js");
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

test("exclude comes from init or from the call, ids as strings", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, exclude: ["cart-1", 42], flushInterval: 5 });
  await sdk.recommend();
  await sdk.recommend({ exclude: ["shown"] });
  const bodies = sent.filter((c) => c.url === "/iid_recommend")
    .map((c) => JSON.parse(c.options.body));
  assert.deepEqual(bodies.map((b) => b.exclude), [["cart-1", "42"], ["shown"]]);
});

test("filter, maxPerCategory and explain come from init or from the call", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5, explain: true,
             filter: { categories: ["Coffee"] }, maxPerCategory: 2 });
  await sdk.recommend();
  await sdk.recommend({ filter: { price: { max: 50 } }, maxPerCategory: null, explain: false });
  await sdk.recommend({ filter: null });
  const bodies = sent.filter((c) => c.url === "/iid_recommend")
    .map((c) => JSON.parse(c.options.body));
  assert.deepEqual(bodies[0].filter, { categories: ["Coffee"] });
  assert.equal(bodies[0].max_per_category, 2);
  assert.equal(bodies[0].explain, true);
  // a call's own value wins, null and false included
  assert.deepEqual(bodies[1].filter, { price: { max: 50 } });
  assert.ok(!("max_per_category" in bodies[1]) && !("explain" in bodies[1]));
  assert.ok(!("filter" in bodies[2]) && bodies[2].max_per_category === 2);
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
  assert.deepEqual(Object.keys(body), ["user_interactions", "k", "session_id", "recommend_seen"]);
  assert.equal(body.session_id, sdk.sessionId()); // its experiment variant, if one runs
  assert.equal(body.k, 4);
  assert.equal(body.recommend_seen, true);
  assert.equal(body.user_interactions.x.rating, 5);
  await new Promise((r) => setTimeout(r, 30)); // let the event batch go before the next test
});

test("a click on a rendered item carries its answer's recommendation_id", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5 });
  sdk.track("a", "click", "rid-1");
  sdk.track("b", "view");
  await new Promise((r) => setTimeout(r, 30));
  const events = JSON.parse(sent.find((c) => c.url === "/events").options.body).events;
  assert.equal(events[0].recommendation_id, "rid-1");
  assert.equal("recommendation_id" in events[1], false);
});

test("without consent, recommend sends no session id", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false });
  sdk.setConsent(false);
  await sdk.recommend();
  const body = JSON.parse(sent.find((c) => c.url === "/iid_recommend").options.body);
  assert.equal("session_id" in body, false);
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

function answering(statuses) {
  // fetch answering the given statuses in turn (then 202), recording each call
  const calls = [];
  globalThis.fetch = async (url, options) => {
    calls.push({ url, options });
    const status = statuses.length ? statuses.shift() : 202;
    if (status === 0) throw new TypeError("network down");
    return { ok: status < 300, status, headers: { get: (h) => (h === "Retry-After" ? "0" : null) },
             json: async () => ({}) };
  };
  return calls;
}

test("a 503, a 429 and a lost connection are retried with the same Idempotency-Key", async () => {
  fakeBrowser();
  const calls = answering([0, 503, 429]);
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5 });
  sdk.track("a", "click");
  // the lost connection backs off a second; 503 and 429 wait their Retry-After (0 here)
  for (let i = 0; i < 150 && calls.length < 4; i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 50));
  const events = calls.filter((c) => c.url === "/events");
  assert.equal(events.length, 4);
  const keys = new Set(events.map((c) => c.options.headers["Idempotency-Key"]));
  assert.equal(keys.size, 1);
  assert.ok([...keys][0]);
  assert.equal(JSON.parse(sessionStorage.getItem("sessionrec:queue")).batches.length, 0);
});

test("a refused batch (400) is dropped, not retried forever; the next one gets a new key", async () => {
  fakeBrowser();
  const calls = answering([400]);
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5, batchSize: 1 });
  sdk.track("a");
  sdk.track("b");
  await new Promise((r) => setTimeout(r, 60));
  const keys = calls.map((c) => c.options.headers["Idempotency-Key"]);
  assert.equal(keys.length, 2);
  assert.notEqual(keys[0], keys[1]);
});

test("the buffer is bounded: the oldest events go first", async () => {
  fakeBrowser();
  globalThis.fetch = () => new Promise(() => {}); // a request that never ends: all else waits
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 20, batchSize: 5, maxQueued: 12 });
  for (let i = 0; i < 30; i++) sdk.track("i" + i);
  const kept = JSON.parse(sessionStorage.getItem("sessionrec:queue"));
  const ids = kept.queue.concat(...kept.batches.map((b) => b.events)).map((e) => e.item_id);
  assert.ok(ids.length <= 12);
  assert.ok(ids.includes("i29") && !ids.includes("i0"));
});

test("event times follow the server's clock, learned from its Date header", async () => {
  fakeBrowser();
  const calls = [];
  const ahead = Date.now() + 3600 * 1000; // the server is an hour ahead of this browser
  globalThis.fetch = async (url, options) => {
    calls.push({ url, options });
    return { ok: true, status: 200, headers: { get: (h) => (h === "Date" ? new Date(ahead).toUTCString() : null) },
             json: async () => ({ recommendations: [], message: "m" }) };
  };
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5 });
  await sdk.recommend();
  sdk.track("a");
  await new Promise((r) => setTimeout(r, 40));
  const sent = JSON.parse(calls.find((c) => c.url === "/events").options.body).events[0];
  assert.ok(Math.abs(sent.timestamp - ahead / 1000) < 5, String(sent.timestamp));
});

// A page's DOM, as much as render needs: elements record their attributes, children and the
// markup given to innerHTML (no parser: what reaches innerHTML is what is checked)
function fakeElement() {
  const el = { attributes: {}, children: [], markup: null, firstElementChild: null,
               setAttribute(k, v) { this.attributes[k] = String(v); },
               getAttribute(k) { return k in this.attributes ? this.attributes[k] : null; },
               appendChild(child) { this.children.push(child); return child; },
               querySelectorAll() { return []; } };
  Object.defineProperty(el, "innerHTML", { set(v) { this.markup = String(v); this.children = []; },
                                           get() { return this.markup || ""; } });
  return el;
}

function answeringRecommendations(recommendations, status = 200) {
  globalThis.fetch = async (url) => ({
    ok: status < 300, status, headers: { get: () => null },
    json: async () => (url.endsWith("/iid_recommend") && status < 300
      ? { recommendations, message: "m", recommendation_id: "rid" }
      : { error: { code: "unauthorized", message: "Send an API key" } }),
  });
}

// what an HTML parser makes of escaped text: every character reference decoded
const decoded = (s) => s.replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n)))
  .replace(/&(amp|lt|gt|quot|#39|apos);/g, (_, e) =>
    ({ amp: "&", lt: "<", gt: ">", quot: '"', "#39": "'", apos: "'" })[e]);

const HOSTILE = ["<img src=x onerror=window.__pwned=1>", "a\"b' onclick=alert(1) c=`d`&e", "89898"];

test("a string template gets the answer's strings escaped: ids are text, attributes the id",
     async () => {
  fakeBrowser();
  globalThis.document.createElement = () => fakeElement();
  answeringRecommendations(HOSTILE.map((id) => ({ id, score: 0.5, because: [id],
                                                  source: "session" })));
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false });
  const target = fakeElement();
  const answer = await sdk.render(target, (r) =>
    "<div data-item-id=\"" + r.id + "\" title=" + r.id + ">" + r.id + " · " + r.because.join() +
    " " + r.source + " " + r.score.toFixed(1) + "</div>");
  assert.equal(target.children.length, 3);
  HOSTILE.forEach((id, n) => {
    const markup = target.children[n].markup;
    const [, attribute, title, text, because] =
      markup.match(/^<div data-item-id="(.*)" title=(.*)>(.*) · (.*) session 0\.5<\/div>$/);
    for (const part of [attribute, title, text, because]) {
      // nothing of the id is markup: no tag, no quote, no attribute separator; and the
      // parser gives the id back whole (the clicks the SDK tracks read data-item-id)
      assert.ok(!/[<>"'`=\s]/.test(part), markup);
      assert.equal(decoded(part), id);
    }
  });
  // the answer, and the impressions of the list, carry the ids themselves
  assert.deepEqual(answer.recommendations.map((r) => r.id), HOSTILE);
  assert.deepEqual(target.__sessionrecItems, HOSTILE);
});

test("an element template gets the recommendation as it is", async () => {
  fakeBrowser();
  globalThis.document.createElement = () => fakeElement();
  answeringRecommendations(HOSTILE.map((id) => ({ id, score: 0.5 })));
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false });
  const target = fakeElement(), seen = [];
  await sdk.render(target, (r) => {
    seen.push(r.id);
    const el = fakeElement();
    el.setAttribute("data-item-id", r.id);
    return el;
  });
  assert.deepEqual(seen, HOSTILE);
  assert.deepEqual(target.children.map((c) => c.getAttribute("data-item-id")), HOSTILE);
  assert.ok(target.children.every((c) => c.markup === null)); // never through innerHTML
});

const BUILT_IN = ["__proto__", "constructor", "toString", "hasOwnProperty"];

test("ids named like Object's own properties are ids like any other", async () => {
  const { store, sent } = fakeBrowser();
  const sdk = loadSdk();
  let m = {};
  BUILT_IN.forEach((id, n) => { m = sdk._addInteraction(m, id, n + 1, 100 + n, 10); });
  assert.deepEqual(Object.keys(m), BUILT_IN);
  assert.deepEqual(BUILT_IN.map((id) => m[id].rating), [1, 2, 3, 4]);
  assert.equal(Object.getPrototypeOf(m), Object.prototype);
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5,
             ratings: { view: 1, click: 3, add_to_cart: 4, purchase: 5 } });
  BUILT_IN.forEach((id) => sdk.track(id, "click"));
  sdk.track("x", "constructor"); // an event type the ratings do not name: a view's rating
  const stored = JSON.parse(store.get("sessionrec:interactions"));
  assert.deepEqual(Object.keys(stored), [...BUILT_IN, "x"]);
  assert.ok(BUILT_IN.every((id) => stored[id].rating === 3) && stored.x.rating === 1);
  await sdk.recommend();
  const body = JSON.parse(sent.find((c) => c.url === "/iid_recommend").options.body);
  assert.deepEqual(Object.keys(body.user_interactions), [...BUILT_IN, "x"]);
  await new Promise((r) => setTimeout(r, 30));
});

test("views of items named like Object's own properties are tracked", async () => {
  fakeBrowser();
  const observers = [];
  globalThis.IntersectionObserver = class {
    constructor(callback) { this.callback = callback; observers.push(this); }
    observe() {} unobserve() {}
  };
  const elements = BUILT_IN.map((id) => {
    const el = fakeElement();
    el.setAttribute("data-item-id", id);
    return el;
  });
  globalThis.document.querySelectorAll = () => elements;
  try {
    const sdk = loadSdk();
    sdk.init({ endpoint: "", flushInterval: 5 });
    observers[0].callback(elements.map((target) => ({ target, isIntersecting: true })));
    await new Promise((r) => setTimeout(r, 1100)); // a second in view makes a view
    assert.deepEqual(Object.keys(sdk.interactions()).sort(), [...BUILT_IN].sort());
  } finally {
    delete globalThis.IntersectionObserver;
  }
});

test("an API error rejects render and reaches onError, JSON or not", async () => {
  fakeBrowser();
  globalThis.document.createElement = () => fakeElement();
  const target = fakeElement();
  globalThis.document.querySelector = () => target;
  answeringRecommendations([], 401);
  const errors = [];
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, container: "#recs", onError: (e) => errors.push(e) });
  await assert.rejects(sdk.render("#recs"), (e) => e.status === 401 && /API key/.test(e.message));
  for (let i = 0; i < 50 && !errors.length; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(errors.length, 1); // init's own render, scheduled
  assert.equal(errors[0].status, 401);
  // a proxy's error page is no JSON: still a rejection that says the status
  globalThis.fetch = async () => ({ ok: false, status: 502, statusText: "Bad Gateway",
                                    headers: { get: () => null },
                                    json: async () => { throw new SyntaxError("Unexpected <"); } });
  await assert.rejects(sdk.recommend(), (e) => e.status === 502 && /502/.test(e.message));
  // an answer without a list is refused too, rather than thrown on while rendering
  globalThis.fetch = async () => ({ ok: true, status: 200, headers: { get: () => null },
                                    json: async () => ({}) });
  await assert.rejects(sdk.render("#recs"), (e) => e.status === 200);
});

test("a placement comes from init or from the call; without k the placement's holds", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, placement: "home", flushInterval: 5 });
  await sdk.recommend();
  await sdk.recommend({ placement: "cart", k: 3 });
  const bodies = sent.filter((c) => c.url === "/iid_recommend")
    .map((c) => JSON.parse(c.options.body));
  assert.equal(bodies[0].placement, "home");
  assert.ok(!("k" in bodies[0])); // the placement's k, or the server's default
  assert.equal(bodies[1].placement, "cart");
  assert.equal(bodies[1].k, 3);
});

test("rerank posts the given items, ids as strings, with the rules and the session", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, exclude: ["x"], flushInterval: 5 });
  sdk.track("a", "click");
  await sdk.rerank(["b", 7, "c"], { placement: "category" });
  await sdk.recommend({ items: ["d"] }); // render({items}) reranks as well
  const calls = sent.filter((c) => c.url === "/rerank").map((c) => JSON.parse(c.options.body));
  assert.deepEqual(calls[0].items, ["b", "7", "c"]);
  assert.equal(calls[0].placement, "category");
  assert.deepEqual(calls[0].exclude, ["x"]);
  assert.equal(calls[0].session_id, sdk.sessionId());
  assert.equal(calls[0].user_interactions.a.rating, 3);
  assert.ok(!("recommend_seen" in calls[0]));
  assert.deepEqual(calls[1].items, ["d"]);
  await new Promise((r) => setTimeout(r, 30));
});

test("a call may send other interactions than the visitor's: a cart's items", async () => {
  const { sent } = fakeBrowser();
  const sdk = loadSdk();
  sdk.init({ endpoint: "", autoTrack: false, flushInterval: 5 });
  sdk.track("viewed", "view");
  await sdk.recommend({ placement: "cart", interactions: { "c-1": {}, "c-2": {} } });
  const body = JSON.parse(sent.find((c) => c.url === "/iid_recommend").options.body);
  assert.deepEqual(Object.keys(body.user_interactions), ["c-1", "c-2"]);
  await new Promise((r) => setTimeout(r, 30));
});
