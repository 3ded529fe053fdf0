// The VM console page: load the vendored noVNC (static/vendor/novnc, MPL-2.0), ask the portal
// for a one-time token (POST, CSRF), then let noVNC connect to the console proxy with it.
//
// Every step has a deadline and says what failed: the page never stays at "Connecting…".
// noVNC is imported dynamically (not with a static import) so that a module file the browser
// fails to fetch is retried and, failing that, reported here; with a static import a single
// failed file (e.g. net::ERR_NETWORK_CHANGED when the client's network interfaces change
// while ~30 module files load) stops this script from running at all, silently.

const MODULE_ATTEMPTS = 3;        // tries to load noVNC's modules, 1 s apart
const TOKEN_TIMEOUT_MS = 15000;   // the portal must answer the token request within this
const TOKEN_ATTEMPTS = 2;         // a request that failed on the network (no answer) is sent again once
const CONNECT_TIMEOUT_MS = 20000; // the console proxy must let us in within this (tokens expire after 30 s)

const screen = document.getElementById("console-screen");
const status = document.getElementById("console-status");
const cad = document.getElementById("console-cad");
const disconnect = document.getElementById("console-disconnect");
const retry = document.getElementById("console-retry");

function say(text) { status.textContent = text; }

function failed(text) {
  say(text);
  status.dataset.state = "failed";
  if (retry) retry.hidden = false;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function loadRFB() {
  let error;
  for (let attempt = 1; attempt <= MODULE_ATTEMPTS; attempt++) {
    try {
      return (await import("./vendor/novnc/core/rfb.js")).default;
    } catch (err) {
      error = err;
      console.warn(`noVNC did not load (attempt ${attempt} of ${MODULE_ATTEMPTS}): ${err}`);
      if (attempt < MODULE_ATTEMPTS) await sleep(1000);
    }
  }
  throw error;
}

async function askForToken() {
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(screen.dataset.tokenUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRFToken": screen.dataset.csrf, "HX-Request": "true" },
        signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS),
      });
    } catch (err) {
      if (err.name === "TimeoutError") {
        throw new Error(`the portal did not answer the console request within ${TOKEN_TIMEOUT_MS / 1000} s`);
      }
      // no answer at all (network error): the token, if one was made, is never used and expires
      if (attempt < TOKEN_ATTEMPTS) { await sleep(1000); continue; }
      throw new Error(`the console request did not reach the portal (${err.message})`);
    }
    if (!response.ok) {
      const text = (await response.text()).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300);
      const refused = new Error(`Refused (${response.status}): ${text}`);
      refused.refused = true;
      throw refused;
    }
    return (await response.json()).url;
  }
}

async function connect() {
  let RFB, url;
  try {
    RFB = await loadRFB();
  } catch (err) {
    failed(`The console's scripts did not load (${err.message}). Try again.`);
    return;
  }
  try {
    url = await askForToken();
  } catch (err) {
    failed(err.refused ? err.message : `Could not ask for a console: ${err.message}. Try again.`);
    return;
  }
  const proxy = new URL(url).origin;
  let connected = false;
  let timedOut = false;
  const rfb = new RFB(screen, url);
  rfb.scaleViewport = true;
  const deadline = setTimeout(() => {
    timedOut = true;
    rfb.disconnect();
  }, CONNECT_TIMEOUT_MS);
  rfb.addEventListener("connect", () => {
    connected = true;
    clearTimeout(deadline);
    delete status.dataset.state;
    say("Connected.");
    cad.disabled = false; disconnect.disabled = false;
  });
  rfb.addEventListener("disconnect", (e) => {
    clearTimeout(deadline);
    cad.disabled = true; disconnect.disabled = true;
    if (timedOut) {
      failed(`The console proxy (${proxy}) did not let us in within ${CONNECT_TIMEOUT_MS / 1000} s. Try again.`);
    } else if (!connected) {
      failed(`The console proxy (${proxy}) refused or dropped the connection (see the audit log). Try again.`);
    } else {
      say(e.detail.clean ? "Disconnected." : "The connection was refused or lost (see the audit log).");
    }
  });
  cad.addEventListener("click", () => rfb.sendCtrlAltDel());
  disconnect.addEventListener("click", () => rfb.disconnect());
}

if (retry) retry.addEventListener("click", () => window.location.reload());
if (screen) connect();
