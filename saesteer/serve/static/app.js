// The side-by-side page: one prompt, two conversations (unsteered and steered), per-token
// feature activations. Talks to POST /v1/saesteer/compare on the same server; no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, auth: false, history: { unsteered: [], steered: [] } };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const msg = data && data.error ? data.error.message : res.status + " " + res.statusText;
    throw new Error(msg);
  }
  return data;
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

async function loadInfo() {
  const info = await api("/v1/saesteer/info");
  state.info = info;
  $("model-name").textContent = info.model + " (" + info.model_id + ")";
  const sel = $("steering");
  sel.replaceChildren();
  for (const [name, spec] of Object.entries(info.specs)) {
    sel.appendChild(option("spec:" + name, name + (spec.conditional ? " (conditional)" : "")));
  }
  const saes = Object.keys(info.saes);
  if (saes.length) sel.appendChild(option("custom", "SAE feature…"));
  if (info.default) sel.value = "spec:" + info.default;
  for (const name of saes) {
    $("sae").appendChild(option(name, name));
    $("probe-sae").appendChild(option(name, name));
  }
  if (!sel.options.length) setStatus("This server has no steering registered: start it with --steer SPEC.", true);
  onSteeringChange();
}

function onSteeringChange() {
  const value = $("steering").value;
  $("custom").hidden = value !== "custom";
  if (value && value.startsWith("spec:") && state.info) {
    const spec = state.info.specs[value.slice(5)];
    const first = spec.interventions.find((iv) => iv.sae);
    if (first) {  // prefill the custom form with the spec's first feature
      $("sae").value = first.sae || $("sae").value;
      $("feature").value = first.features[0].feature;
      $("op").value = ["clamp", "add", "scale"].includes(first.features[0].op) ? first.features[0].op : "clamp";
      $("value").value = first.features[0].value;
    }
  }
  $("steer-label").textContent = value === "custom" ? "(SAE feature)" : value ? "(" + value.slice(5) + ")" : "";
}

function steeringBody() {
  const strength = parseFloat($("strength").value);
  const value = $("steering").value;
  if (value === "custom") {
    return {
      sae: $("sae").value, strength,
      features: [{ feature: parseInt($("feature").value, 10), op: $("op").value, value: parseFloat($("value").value) }],
    };
  }
  return { spec: value.slice(5), strength };
}

function bubble(column, role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (text !== undefined) div.textContent = text;
  $(column).querySelector(".log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function shade(tokens, peak) {
  const frag = document.createDocumentFragment();
  for (const t of tokens) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = t.text;
    span.title = t.activation.toFixed(3);
    span.dataset.activation = t.activation;
    const a = Math.min(1, Math.abs(t.activation) / peak);
    span.style.backgroundColor = t.activation >= 0 ? `rgba(230, 90, 40, ${0.75 * a})` : `rgba(40, 110, 230, ${0.75 * a})`;
    frag.appendChild(span);
  }
  return frag;
}

function answer(column, side, probe, peakBoth) {
  const div = bubble(column, "assistant");
  div.dataset.finish = side.finish_reason;
  if (side.tokens.length) div.appendChild(shade(side.tokens, peakBoth));
  else div.textContent = side.text;
  const badge = document.createElement("span");
  badge.className = "badge";
  const feature = probe.kind === "sae_feature" ? `${probe.sae || "SAE"} #${probe.feature}` : "steering direction";
  const peak = side.tokens.reduce((m, t) => Math.max(m, t.activation), 0);
  let text = `${feature} @ ${probe.hook}: peak ${peak.toFixed(2)}`;
  if (column === "steered" && side.steered === false) text += ` · condition not met (score ${Number(side.detector_score).toFixed(2)}): not steered`;
  else if (column === "steered" && side.detector_score !== null && side.detector_score !== undefined) text += ` · condition met (score ${Number(side.detector_score).toFixed(2)})`;
  if (side.verdict) {
    text += ` · ${side.verdict.outcome}`;
    if (!side.verdict.coherent) text += ` (${side.verdict.broken_because.join("; ")})`;
    div.dataset.outcome = side.verdict.outcome;
  }
  badge.textContent = text;
  div.appendChild(badge);
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const user = { role: "user", content: prompt };
  const body = {
    messages: [...state.history.unsteered, user],
    steered_messages: [...state.history.steered, user],
    steering: steeringBody(),
    max_tokens: parseInt($("max-tokens").value, 10) || 64,
  };
  if ($("probe-sae").value) body.probe = { sae: $("probe-sae").value, feature: parseInt($("probe-feature").value, 10) || 0 };
  bubble("unsteered", "user", prompt);
  bubble("steered", "user", prompt);
  $("send").disabled = true;
  setStatus("Generating…");
  const started = performance.now();
  try {
    const data = await api("/v1/saesteer/compare", body);
    // One colour scale for both answers, so their activations compare at a glance.
    const all = data.unsteered.tokens.concat(data.steered.tokens);
    const peakBoth = Math.max(1e-6, ...all.map((t) => Math.abs(t.activation)));
    answer("unsteered", data.unsteered, data.probe, peakBoth);
    answer("steered", data.steered, data.probe, peakBoth);
    state.history.unsteered.push(user, { role: "assistant", content: data.unsteered.text });
    state.history.steered.push(user, { role: "assistant", content: data.steered.text });
    $("prompt").value = "";
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s · steering ${data.steering.label} (${data.steering.hash})`);
  } catch (e) {
    setStatus("Error: " + e.message, true);
  } finally {
    $("send").disabled = false;
  }
}

function clearChat() {
  state.history = { unsteered: [], steered: [] };
  for (const id of ["unsteered", "steered"]) $(id).querySelector(".log").replaceChildren();
  setStatus("");
}

async function start() {
  $("api-key").value = sessionStorage.getItem("saesteer-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("saesteer-key", $("api-key").value.trim());
    loadInfo().then(() => { setStatus(""); document.body.dataset.ready = "1"; })
      .catch((e) => setStatus("Error: " + e.message, true));
  });
  $("steering").addEventListener("change", onSteeringChange);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = parseFloat($("strength").value).toFixed(1) + "×"; });
  $("probe-sae").addEventListener("change", () => { $("probe-feature").hidden = !$("probe-sae").value; });
  $("chat").addEventListener("submit", send);
  $("clear").addEventListener("click", clearChat);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat").requestSubmit(); }
  });
  try {
    const health = await api("/health");
    state.auth = health.auth;
    $("key-box").hidden = !health.auth;
    if (health.auth && !$("api-key").value) { setStatus("Enter the server's API key."); return; }
    await loadInfo();
    document.body.dataset.ready = "1";
  } catch (e) {
    setStatus("Error: " + e.message, true);
  }
}

start();
