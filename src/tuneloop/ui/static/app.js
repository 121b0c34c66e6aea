// tuneloop ui: the only script. Live curves, background-job refresh, review shortcuts, typed
// confirmations and the playground. Vendored with the package; nothing is fetched elsewhere.
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

// A running training: fetch the curves fragment every 2 s until the run is no longer live.
function live() {
  const box = document.getElementById("live");
  if (!box) return;
  const tick = async () => {
    if (!["training", "starting"].includes(box.dataset.status)) return;
    try {
      const r = await fetch(box.dataset.url, { credentials: "same-origin" });
      if (r.ok) {
        const tmp = document.createElement("div");
        tmp.innerHTML = await r.text();
        const fresh = tmp.querySelector("#live");
        if (fresh) {
          box.innerHTML = fresh.innerHTML; box.dataset.status = fresh.dataset.status;
          // The run ended: reload once for its summary and files.
          if (!["training", "starting"].includes(fresh.dataset.status)) { location.reload(); return; }
        }
      }
    } catch (e) { /* the server restarts: try again */ }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// A background job (audit, monitor) still running: reload the page until it is done.
function refresh() {
  const el = document.querySelector("[data-refresh]");
  if (el) setTimeout(() => location.reload(), 1000 * Number(el.dataset.refresh || 3));
}

// Typed confirmation: the button unlocks only when the box holds the expected text.
function confirms() {
  document.querySelectorAll("input[data-confirm]").forEach((inp) => {
    const btn = inp.form.querySelector("button[type=submit]");
    const check = () => { btn.disabled = inp.value.trim() !== inp.dataset.confirm; };
    inp.addEventListener("input", check); check();
    const sel = inp.form.querySelector("select[name=version]");
    if (sel) sel.addEventListener("change", () => { inp.dataset.confirm = sel.value; check(); });
  });
}

// Review: keyboard shortcuts (shown on the page). Keys are ignored while typing in a field,
// except Ctrl+Enter (save) and Escape (leave the field).
function review() {
  const form = document.getElementById("rate");
  if (!form) return;
  const rating = form.querySelector("input[name=rating]");
  const click = (sel) => { const b = form.querySelector(sel); if (b) { b.click(); return true; } return false; };
  form.querySelectorAll("button[data-rating]").forEach((b) => b.addEventListener("click", () => {
    if (rating) rating.value = b.dataset.rating;
  }));
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    const typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
    if (typing) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); click("button[data-save]"); }
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    let done = false;
    if (/^[1-9]$/.test(k)) done = click(`button[data-key="${k}"]`);
    else if (k === "y") done = click("button[data-key=y]");
    else if (k === "n") { const a = document.getElementById("skip"); if (a) { a.click(); done = true; } }
    else if (k === "e") { const c = form.querySelector("textarea[name=corrected]"); if (c) { c.focus(); done = true; } }
    else if (k === "l") { const c = form.querySelector("input[name=label]"); if (c) { c.focus(); done = true; } }
    else if (k === "?") { const h = document.getElementById("keys"); if (h) { h.hidden = !h.hidden; done = true; } }
    if (done) ev.preventDefault();
  });
}

// Playground: each model keeps its own side of the conversation.
function playground() {
  const form = document.getElementById("play");
  if (!form) return;
  const out = document.getElementById("answers");
  const history = {};
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const models = [...form.querySelectorAll("select[name=model]")].map((s) => s.value).filter(Boolean);
    const text = form.message.value.trim();
    if (!models.length || !text) return;
    out.innerHTML = "";
    const cols = {};
    for (const m of models) {
      const col = document.createElement("div");
      col.className = "card";
      col.innerHTML = "<h3></h3><div class=answer>…</div><small></small>";
      col.querySelector("h3").textContent = m;
      out.appendChild(col); cols[m] = col;
    }
    form.querySelector("button[type=submit]").disabled = true;
    for (const m of models) {
      history[m] = history[m] || [];
      history[m].push({ role: "user", content: text });
      const col = cols[m];
      try {
        const res = await post("/playground/chat", {
          models: [m], messages: history[m], max_tokens: Number(form.max_tokens.value || 64),
          template: form.template ? form.template.checked : false, system: form.system.value,
        });
        const a = res.answers[0];
        if (a.error) { col.querySelector(".answer").textContent = a.error; col.classList.add("bad"); history[m].pop(); continue; }
        history[m].push({ role: "assistant", content: a.text });
        col.querySelector(".answer").textContent = history[m].map((x) => `${x.role}: ${x.content}`).join("\n\n");
        col.querySelector("small").textContent = `${a.version} · ${a.tokens} tokens · ${a.seconds} s`;
      } catch (e) {
        col.querySelector(".answer").textContent = String(e.message || e); history[m].pop();
      }
    }
    form.querySelector("button[type=submit]").disabled = false;
    form.message.value = "";
  });
  const reset = document.getElementById("reset");
  if (reset) reset.addEventListener("click", () => { for (const k in history) delete history[k]; out.innerHTML = ""; });
}

// Selects that change the page (run, file, source) apply at once.
function autosubmit() {
  document.querySelectorAll("select[data-autosubmit]").forEach((s) => s.addEventListener("change", () => s.form.submit()));
}

document.addEventListener("DOMContentLoaded", () => { live(); refresh(); confirms(); review(); playground(); autosubmit(); });
