// The VM console page: ask the portal for a one-time token (POST, CSRF), then let the
// vendored noVNC (static/vendor/novnc, MPL-2.0) connect to the console proxy with it.
import RFB from "./vendor/novnc/core/rfb.js";

const screen = document.getElementById("console-screen");
const status = document.getElementById("console-status");
const cad = document.getElementById("console-cad");
const disconnect = document.getElementById("console-disconnect");

function say(text) { status.textContent = text; }

async function connect() {
  let url;
  try {
    const response = await fetch(screen.dataset.tokenUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": screen.dataset.csrf, "HX-Request": "true" },
    });
    if (!response.ok) { say(`Refused (${response.status}): ${(await response.text()).replace(/<[^>]*>/g, " ").trim().slice(0, 300)}`); return; }
    url = (await response.json()).url;
  } catch (err) { say(`Could not ask for a console: ${err}`); return; }
  const rfb = new RFB(screen, url);
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { say("Connected."); cad.disabled = false; disconnect.disabled = false; });
  rfb.addEventListener("disconnect", (e) => {
    say(e.detail.clean ? "Disconnected." : "The connection was refused or lost (see the audit log).");
    cad.disabled = true; disconnect.disabled = true;
  });
  cad.addEventListener("click", () => rfb.sendCtrlAltDel());
  disconnect.addEventListener("click", () => rfb.disconnect());
}

if (screen) connect();
