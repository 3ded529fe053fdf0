// Confirmation before destructive actions for plain (non-htmx) forms: the server refuses
// them unless confirm=yes, which only this dialog adds. htmx forms use hx-confirm.
// When htmx has taken the submit over (it cancels it and asks with hx-confirm), asking
// again here would show the question twice.
document.addEventListener("submit", function (event) {
  const form = event.target;
  const message = form.dataset.confirm;
  if (event.defaultPrevented || !message || form.querySelector("input[name=confirm]")) return;
  if (!window.confirm(message)) { event.preventDefault(); return; }
  const input = document.createElement("input");
  input.type = "hidden"; input.name = "confirm"; input.value = "yes";
  form.appendChild(input);
});
// Toasts fade away after a while.
document.addEventListener("htmx:afterSwap", function () {
  document.querySelectorAll("#toasts .toast").forEach(function (t) {
    setTimeout(function () { t.remove(); }, 8000);
  });
});
// A page script the browser could not fetch (a network error, or a module file of it) would
// leave the page waiting for it forever: say so where the script would have reported
// (the element named by the script's data-fails-into), with how to recover.
document.addEventListener("error", function (event) {
  const el = event.target;
  if (!(el instanceof HTMLScriptElement) || !el.dataset.failsInto) return;
  const target = document.getElementById(el.dataset.failsInto);
  if (!target) return;
  target.textContent = "This page's script (" + el.src + ") did not load. Reload the page to try again.";
  target.dataset.state = "failed";
}, true);
