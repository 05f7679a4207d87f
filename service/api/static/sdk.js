/* sessionrec browser SDK: track what a visitor touches, ask what to show next.
 * Drop in with <script src="/sdk.js"></script>, then sessionrec.init({endpoint, container}).
 * Clicks on elements with data-item-id are tracked; an element that also has data-track-view
 * counts as viewed after staying half visible for a second. Interactions live in
 * sessionStorage in the seed's shape: {itemId: {timestamp, rating}}. Events go to /events in
 * batches, each with an Idempotency-Key, kept in sessionStorage (at most maxQueued events,
 * oldest dropped) until the server took them: a 429, a 503 or a lost connection is retried
 * with backoff, and a retry is never counted twice. Event times follow the server's clock (its
 * Date header), so a visitor's fast clock cannot get them refused. Feedback: every request
 * carries the session id (its experiment variant, if one runs); a rendered list sends one
 * impression per item, once per answer, when it first becomes at least half visible; a click
 * on a rendered item carries its answer's recommendation_id. With consent off, nothing is
 * stored or sent. No cookies, no dependencies, no build step. Item ids are anyone's data:
 * never markup, never taken for Object's own properties. */
(function (global) {
  "use strict";
  var STORE_KEY = "sessionrec:interactions", SESSION_KEY = "sessionrec:session",
      QUEUE_KEY = "sessionrec:queue";
  var cfg = {
    endpoint: "", key: null, k: null, placement: null, recommendSeen: false, autoTrack: true,
    exclude: null,
    filter: null, maxPerCategory: null, explain: false, container: null, template: null,
    onRender: null, onError: null,
    maxInteractions: 50, flushInterval: 2000, batchSize: 50, consent: true, maxQueued: 500,
    ratings: { view: 1, click: 3, add_to_cart: 4, purchase: 5 }
  };
  // queue: events not yet in a batch; batches: [{key, events, tries, due}] sent in order
  var queue = [], batches = [], timer = null, observer = null, viewed = Object.create(null),
      renderTimer = null, sending = false, clockOffset = 0, listObserver = null,
      shown = Object.create(null);

  function has(o, key) { return Object.prototype.hasOwnProperty.call(o, key); }
  // o[key] = value, "__proto__" included
  function put(o, key, value) {
    Object.defineProperty(o, key, { value: value, enumerable: true, writable: true,
                                    configurable: true });
  }

  function storage() { try { return global.sessionStorage; } catch (e) { return null; } }
  function read(key, fallback) {
    var s = storage(); if (!s || !cfg.consent) return fallback;
    try { var v = JSON.parse(s.getItem(key)); return v == null ? fallback : v; }
    catch (e) { return fallback; }
  }
  function write(key, value) {
    var s = storage(); if (!s || !cfg.consent) return;
    try { s.setItem(key, JSON.stringify(value)); } catch (e) { /* quota: ignore */ }
  }
  function now() { return Math.floor((Date.now() + clockOffset) / 1000); }
  function learnClock(response) {
    var date = response && response.headers && response.headers.get &&
               Date.parse(response.headers.get("Date"));
    if (date) clockOffset = date - Date.now();
  }
  function randomId() {
    if (global.crypto && global.crypto.randomUUID) return global.crypto.randomUUID();
    return "s-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }
  function sessionId() {
    var id = read(SESSION_KEY, null);
    if (!id) { id = randomId(); write(SESSION_KEY, id); }
    return id;
  }

  /* Pure: fold one interaction into the map; a later, stronger interaction raises the
   * rating; the map keeps the `cap` most recent items. */
  function addInteraction(map, itemId, rating, timestamp, cap) {
    var next = {}, id;
    for (id in map) if (has(map, id)) put(next, id, map[id]);
    var old = has(next, itemId) && next[itemId];
    put(next, itemId, { timestamp: timestamp,
                        rating: old && old.rating > rating ? old.rating : rating });
    var ids = Object.keys(next);
    if (ids.length > cap) {
      ids.sort(function (a, b) { return next[a].timestamp - next[b].timestamp; });
      for (var i = 0; i < ids.length - cap; i++) delete next[ids[i]];
    }
    return next;
  }

  function interactions() { return read(STORE_KEY, {}); }

  function headers(json) {
    var h = {};
    if (json) h["Content-Type"] = "application/json";
    if (cfg.key) h["X-API-Key"] = cfg.key;
    return h;
  }

  function save() {
    var total = queue.length;
    batches.forEach(function (b) { total += b.events.length; });
    while (total > cfg.maxQueued && batches.length) total -= batches.shift().events.length;
    if (total > cfg.maxQueued) queue.splice(0, total - cfg.maxQueued);
    write(QUEUE_KEY, { queue: queue, batches: batches });
  }

  /* Send what is queued, a batch at a time in order. 429 and 503 (and no answer at all) are
   * retried after Retry-After or a doubling backoff; a batch keeps its key across retries. */
  function flush() {
    if (!cfg.consent) { queue = []; batches = []; write(QUEUE_KEY, null); return; }
    while (queue.length)
      batches.push({ key: randomId(), events: queue.splice(0, cfg.batchSize), tries: 0, due: 0 });
    save();
    if (sending || !batches.length || !global.fetch) return;
    var batch = batches[0];
    if (batch.due > Date.now()) { schedule(batch.due - Date.now()); return; }
    sending = true;
    var h = headers(true);
    h["Idempotency-Key"] = batch.key;
    function retry(seconds) {
      batch.tries++;
      if (!(seconds >= 0)) seconds = Math.min(60, Math.pow(2, batch.tries - 1));
      batch.due = Date.now() + 1000 * seconds;
      save();
      schedule(batch.due - Date.now());
    }
    global.fetch(cfg.endpoint + "/events", { method: "POST", body: JSON.stringify({ events: batch.events }),
                                             keepalive: true, headers: h })
      .then(function (r) {
        sending = false;
        learnClock(r);
        if (r.status === 429 || r.status === 503) {
          retry(parseInt(r.headers && r.headers.get && r.headers.get("Retry-After"), 10));
          return;
        }
        if (!r.ok && global.console) global.console.warn("sessionrec: events refused (" + r.status + ")");
        batches.shift(); save();
        if (batches.length) flush();
      }, function () { sending = false; retry(NaN); });
  }

  function schedule(delay) {
    if (timer) return;
    timer = setTimeout(function () { timer = null; flush(); },
                       delay == null ? cfg.flushInterval : Math.max(0, delay));
  }

  function enqueue(event) {
    queue.push(event);
    save();
    if (queue.length >= cfg.batchSize) flush(); else schedule();
  }

  // recommendationId: the answer whose list showed the item (a click on a rendered item)
  function track(itemId, type, recommendationId) {
    if (!cfg.consent || itemId == null || itemId === "") return;
    type = type || "view";
    var rating = has(cfg.ratings, type) ? cfg.ratings[type] : 1;
    var ts = now();
    write(STORE_KEY, addInteraction(interactions(), String(itemId), rating, ts,
                                    cfg.maxInteractions));
    var event = { session_id: sessionId(), item_id: String(itemId), type: type, timestamp: ts };
    if (recommendationId) event.recommendation_id = recommendationId;
    enqueue(event);
    if (cfg.container) scheduleRender();
  }

  /* One impression per item of an answer, the first time its list is half visible (never
   * twice for one answer). Impressions are not interest: the session's items stay as they
   * are. */
  function sendImpressions(recommendationId, itemIds) {
    if (!cfg.consent || !recommendationId || shown[recommendationId]) return;
    shown[recommendationId] = true;
    var sid = sessionId(), ts = now();
    itemIds.forEach(function (id) {
      queue.push({ session_id: sid, item_id: String(id), type: "impression", timestamp: ts,
                   recommendation_id: recommendationId });
    });
    save();
    if (queue.length >= cfg.batchSize) flush(); else schedule();
  }

  function watchList(target, answer) {
    target.setAttribute("data-recommendation-id", answer.recommendation_id || "");
    target.__sessionrecItems = answer.recommendations.map(function (r) { return r.id; });
    // without an IntersectionObserver what is seen is unknown: no impression rather than a
    // false one
    if (!global.IntersectionObserver || !answer.recommendations.length) return;
    if (!listObserver) {
      listObserver = new global.IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (!entry.isIntersecting || entry.intersectionRatio < 0.5) return;
          var el = entry.target;
          listObserver.unobserve(el);
          sendImpressions(el.getAttribute("data-recommendation-id"), el.__sessionrecItems);
        });
      }, { threshold: 0.5 });
    }
    listObserver.unobserve(target);
    listObserver.observe(target);
  }

  function scheduleRender() {
    if (renderTimer) return;
    renderTimer = setTimeout(function () {
      renderTimer = null;
      render(cfg.container, cfg.template).then(function (answer) {
        if (cfg.onRender) cfg.onRender(answer);
      }, function (err) {
        if (cfg.onError) cfg.onError(err);
        else if (global.console) global.console.warn("sessionrec: " + err.message);
      });
    }, 50);
  }

  // what both questions send: only what the page sets (a placement's k and rules hold
  // otherwise); interactions: the visitor's unless given (a cart's, in the seed's shape)
  function question(o) {
    var body = { user_interactions: o.interactions || interactions() };
    var k = o.k || cfg.k, placement = o.placement || cfg.placement;
    if (k) body.k = k;
    if (placement) body.placement = String(placement);
    // the rules, each per call else init's: exclude (item ids never to show), filter
    // ({categories, tags, price: {min, max}, attributes}), maxPerCategory, explain
    var exclude = o.exclude || cfg.exclude;
    if (exclude && exclude.length) body.exclude = exclude.map(String);
    var filter = o.filter !== undefined ? o.filter : cfg.filter;
    if (filter) body.filter = filter;
    var most = o.maxPerCategory !== undefined ? o.maxPerCategory : cfg.maxPerCategory;
    if (most) body.max_per_category = most;
    if (o.explain !== undefined ? o.explain : cfg.explain) body.explain = true;
    if (cfg.consent) body.session_id = sessionId();
    return body;
  }

  function recommend(o) {
    o = o || {};
    if (o.items) return rerank(o.items, o);
    var body = question(o);
    body.recommend_seen = o.recommendSeen != null ? o.recommendSeen : cfg.recommendSeen;
    return ask("/iid_recommend", body);
  }

  // the page's own list (a category page, search results) in its order for this visitor
  function rerank(items, o) {
    var body = question(o || {});
    body.items = items.map(String);
    return ask("/rerank", body);
  }

  function ask(path, body) {
    return global.fetch(cfg.endpoint + path, {
      method: "POST", headers: headers(true), body: JSON.stringify(body)
    }).then(function (r) {
      learnClock(r);
      // a refusal, JSON or not (a proxy's page), or no list: rejected with its status
      return r.json().then(null, function () { return {}; }).then(function (data) {
        data = data || {};
        if (!r.ok || !Array.isArray(data.recommendations)) {
          var e = new Error((data.error && data.error.message) || "HTTP " + r.status);
          e.status = r.status; e.error = data.error; throw e;
        }
        return data;
      });
    });
  }

  function defaultTemplate(rec) {
    var el = global.document.createElement("div");
    el.className = "sessionrec-item";
    el.setAttribute("data-item-id", rec.id);
    el.textContent = rec.id;
    return el;
  }

  // a copy whose strings are escaped for text and attributes, quoted or not
  function escaped(value) {
    if (typeof value === "string") {
      return value.replace(/[&<>"'`=\s]/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
    }
    if (!value || typeof value !== "object") return value;
    var copy = Array.isArray(value) ? [] : {};
    Object.keys(value).forEach(function (k) { put(copy, k, escaped(value[k])); });
    return copy;
  }

  /* A template returns an element (given the recommendation as is) or markup: then made
   * again from the escaped copy, the only one parsed: an id is text, and data-item-id="..."
   * holds the id itself (what a click tracks). */
  function build(template, rec) {
    var node = template(rec);
    if (typeof node !== "string") return node;
    var wrap = global.document.createElement("div");
    wrap.innerHTML = template(escaped(rec));
    return wrap.firstElementChild || wrap;
  }

  function render(container, template, options) {
    var target = typeof container === "string" ? global.document.querySelector(container)
                                               : container;
    return recommend(options).then(function (answer) {
      if (!target) return answer;
      target.innerHTML = "";
      answer.recommendations.forEach(function (rec) {
        target.appendChild(build(template || defaultTemplate, rec));
      });
      observeAll(target);
      watchList(target, answer);
      return answer;
    });
  }

  function itemOf(el) {
    while (el && el !== global.document) {
      if (el.getAttribute && el.getAttribute("data-item-id") != null) return el;
      el = el.parentNode;
    }
    return null;
  }

  function answerOf(el) {
    while (el && el !== global.document) {
      if (el.getAttribute && el.getAttribute("data-recommendation-id")) {
        return el.getAttribute("data-recommendation-id");
      }
      el = el.parentNode;
    }
    return null;
  }

  function onClick(event) {
    var el = itemOf(event.target);
    if (el) track(el.getAttribute("data-item-id"), el.getAttribute("data-event-type") || "click",
                  answerOf(el));
  }

  function observeAll(root) {
    if (!observer) return;
    var nodes = (root || global.document).querySelectorAll("[data-item-id][data-track-view]");
    for (var i = 0; i < nodes.length; i++) observer.observe(nodes[i]);
  }

  function startAutoTrack() {
    global.document.addEventListener("click", onClick, true);
    if (global.IntersectionObserver) {
      var timers = Object.create(null);
      observer = new global.IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          var id = entry.target.getAttribute("data-item-id");
          if (entry.isIntersecting) {
            if (viewed[id] || timers[id]) return;
            timers[id] = setTimeout(function () { viewed[id] = true; delete timers[id];
                                                  track(id, "view"); }, 1000);
          } else if (timers[id]) { clearTimeout(timers[id]); delete timers[id]; }
        });
      }, { threshold: 0.5 });
      observeAll();
    }
  }

  // change settings after init (a category page's filter, say); renders use them from now on
  function configure(options) {
    options = options || {};
    for (var k in options) if (Object.prototype.hasOwnProperty.call(options, k)) {
      if (k === "ratings") { for (var t in options.ratings) cfg.ratings[t] = options.ratings[t]; }
      else cfg[k] = options[k];
    }
    return api;
  }

  function init(options) {
    configure(options);
    var kept = read(QUEUE_KEY, null) || {};
    queue = kept.queue || []; batches = kept.batches || [];
    if (queue.length || batches.length) schedule();
    global.document.addEventListener("visibilitychange", function () {
      if (global.document.visibilityState === "hidden") flush();
    });
    global.addEventListener("pagehide", flush);
    function start() {
      if (cfg.autoTrack) startAutoTrack();
      if (cfg.container) scheduleRender();
    }
    if (global.document.readyState === "loading")
      global.document.addEventListener("DOMContentLoaded", start);
    else start();
    return api;
  }

  function setConsent(granted) {
    cfg.consent = !!granted;
    if (!granted) {
      queue = []; batches = []; shown = Object.create(null);
      var s = storage();
      if (s) { s.removeItem(STORE_KEY); s.removeItem(SESSION_KEY); s.removeItem(QUEUE_KEY); }
    }
  }

  var api = { init: init, configure: configure, track: track, recommend: recommend,
              rerank: rerank, render: render, flush: flush,
              interactions: interactions, sessionId: sessionId, setConsent: setConsent,
              _addInteraction: addInteraction };
  global.sessionrec = api;
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
