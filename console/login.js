// Login: POST the key as JSON (never as a form, so another site cannot submit it), then open
// the console. The server answers 204 with the session cookie, or a JSON error.
"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = document.getElementById("login-error");
  const key = document.getElementById("key").value;
  box.hidden = true;
  if (!key) {
    box.textContent = "Enter the admin key.";
    box.hidden = false;
    return;
  }
  try {
    const res = await fetch("/console/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key }),
    });
    if (res.status === 204) {
      window.location.assign("/console");
      return;
    }
    let message = "Login failed (HTTP " + res.status + ").";
    try {
      const body = await res.json();
      if (res.status === 401) message = "Wrong admin key.";
      else if (body && body.error) message = body.error.message;
    } catch (_) { /* not JSON */ }
    box.textContent = message;
  } catch (e) {
    box.textContent = "The server cannot be reached: " + e.message;
  }
  box.hidden = false;
  document.getElementById("key").focus();
});
