// Refreshes the overview every 2 s and sends the actions of its buttons.
"use strict";
(function () {
  const overview = document.getElementById("overview");
  const notice = document.getElementById("notice");
  const csrf = document.querySelector('meta[name="csrf-token"]');
  let busy = false;

  function show(message, kind) {
    notice.textContent = message;
    notice.className = kind;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.error || response.statusText;
    } catch (error) {
      return response.status + " " + response.statusText;
    }
  }

  async function refresh() {
    if (busy) {
      return;
    }
    try {
      const response = await fetch(overview.dataset.refreshUrl, { credentials: "same-origin" });
      if (!response.ok) {
        show("Refresh failed: " + (await errorText(response)), "error");
        return;
      }
      const html = await response.text();
      if (!busy) {
        overview.innerHTML = html;
      }
    } catch (error) {
      show("Refresh failed: the dashboard did not answer.", "error");
    }
  }

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) {
      return;
    }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      return;
    }
    busy = true;
    button.disabled = true;
    const headers = { Accept: "application/json" };
    if (csrf) {
      headers["X-CSRF-Token"] = csrf.content;
    }
    try {
      const response = await fetch(button.dataset.action, {
        method: "POST",
        headers: headers,
        credentials: "same-origin",
      });
      if (response.ok) {
        const body = await response.json();
        show(button.dataset.label + ": " + body.result + ".", "ok");
      } else {
        show("Rejected: " + (await errorText(response)), "error");
      }
    } catch (error) {
      show("The dashboard did not answer.", "error");
    } finally {
      busy = false;
      button.disabled = false;
      refresh();
    }
  });

  setInterval(refresh, 2000);
})();
