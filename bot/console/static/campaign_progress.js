// A campaign page's live numbers: every few seconds, read its progress.json and update each
// element marked data-field="NAME" (a <meter>'s value, any other element's text). Without this
// script the page shows the same numbers as of its loading.
"use strict";
(function () {
  const section = document.querySelector("[data-progress-url]");
  if (!section) return;
  const url = section.dataset.progressUrl;
  const every = 3000;

  function show(progress) {
    for (const element of document.querySelectorAll("[data-field]")) {
      const value = progress[element.dataset.field];
      if (value === undefined) continue;
      if (element.tagName === "METER") {
        element.value = value;
      } else {
        element.textContent = value === null ? "" : String(value);
      }
    }
    const status = document.querySelector(".status[data-field=status]");
    if (status) status.className = "status status-" + progress.status;
    const reason = document.querySelector(".pause-reason");
    if (reason) reason.hidden = !progress.pause_reason;
  }

  async function refresh() {
    try {
      const answer = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (answer.ok) show(await answer.json());
    } catch (error) {
      // offline for a moment: the numbers stay as they were until the next try
    }
    setTimeout(refresh, every);
  }

  setTimeout(refresh, every);
})();
